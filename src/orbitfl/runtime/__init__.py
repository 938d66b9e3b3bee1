"""What runs the state machines: their events and actions, the ZeroMQ link, the service loop,
Curve keys and the daemons' TOML configs. Shared by both sides; knows no federation policy."""
