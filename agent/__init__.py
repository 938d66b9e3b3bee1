"""Board side: the learner (data share, trainer, delta, curvature), the agent state machine and its
outbox, partial updates, onboard inference, and the agent daemon that drives them."""
