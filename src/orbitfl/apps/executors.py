"""Where the heavy, independent pieces of a sweep or a simulation run: in this process, on the local
cores, or on a Ray cluster.

``--executor local`` (the default) runs everything here, one piece at a time, and lazily: a piece
is computed when its result is first asked for, so a training job the simulator drops before its
time comes costs nothing. ``processes[:N]`` is a pool of N spawned worker processes (default: the
cores this process may use). ``ray[:ADDRESS]`` submits Ray tasks: to the cluster at ADDRESS
(``host:port``, or ``auto`` for the one running on this machine), or, with no address, to a Ray
instance started for this command alone. Ray is the optional extra ``orbitfl[ray]``.

Whoever submits decides the order results are applied in (the simulator: by simulated time, then
satellite; a sweep: the plan's order), and a piece is a pure function of its arguments, so the
numbers are the same under every executor; only wall time differs.
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import importlib
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
KINDS = ("local", "processes", "ray")


@dataclass(frozen=True)
class ExecutorSpec:
    kind: str  # one of KINDS
    workers: int | None = None  # processes: pool size (None: the usable cores)
    address: str | None = None  # ray: cluster address, "auto", or None for a private instance

    def __str__(self) -> str:
        if self.kind == "processes" and self.workers is not None:
            return f"processes:{self.workers}"
        if self.kind == "ray" and self.address is not None:
            return f"ray:{self.address}"
        return self.kind


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def parse_executor(text: str) -> ExecutorSpec:
    """``local``, ``processes[:N]`` or ``ray[:ADDRESS]``; ValueError naming what is wrong."""
    kind, sep, arg = str(text).strip().partition(":")
    if kind not in KINDS:
        raise ValueError(f"executor must be local, processes[:N] or ray[:ADDRESS], got {text!r}")
    if kind == "local":
        if sep:
            raise ValueError(f"executor 'local' takes no argument, got {text!r}")
        return ExecutorSpec("local")
    if kind == "processes":
        if not sep:
            return ExecutorSpec("processes")
        if not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"executor processes:N needs a worker count N >= 1, got {arg!r}")
        return ExecutorSpec("processes", workers=int(arg))
    if sep and not arg:
        raise ValueError("executor ray:ADDRESS needs an address (host:port or auto), got an empty one")
    return ExecutorSpec("ray", address=arg or None)


class Handle(abc.ABC, Generic[T]):
    """A piece submitted to an executor; :meth:`result` waits for it (and re-raises its error)."""

    @abc.abstractmethod
    def result(self) -> T: ...


class _Lazy(Handle[T]):
    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self._fn: Callable[..., T] | None = fn
        self._args = args
        self._value: T | None = None

    def result(self) -> T:
        if self._fn is not None:
            fn, self._fn = self._fn, None
            self._value = fn(*self._args)
            self._args = ()
        return self._value  # type: ignore[return-value]


class _FutureHandle(Handle[T]):
    def __init__(self, future: cf.Future[T]) -> None:
        self.future = future

    def result(self) -> T:
        return self.future.result()


class Executor(abc.ABC):
    """Runs picklable module-level functions. ``workers`` is how many pieces run at once."""

    spec: ExecutorSpec
    workers: int

    @abc.abstractmethod
    def submit(self, fn: Callable[..., T], *args: Any) -> Handle[T]: ...

    def warm(self, fn: Callable[[Any], object], arg: Any) -> None:
        """Start ``fn(arg)`` once per worker without waiting (each worker's one-time set-up, done
        while the caller sets up its own side); nothing to do in this process."""
        return None

    def map_unordered(self, fn: Callable[..., T], items: Iterable[Any]) -> Iterator[tuple[int, T]]:
        """(index, fn(item)) for every item, in the order they finish."""
        for i, item in enumerate(items):
            yield i, self.submit(fn, item).result()

    def close(self) -> None:
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    def __init__(self) -> None:
        self.spec = ExecutorSpec("local")
        self.workers = 1

    def submit(self, fn: Callable[..., T], *args: Any) -> Handle[T]:
        return _Lazy(fn, args)


class ProcessExecutor(Executor):
    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or usable_cores()
        self.spec = ExecutorSpec("processes", self.workers)
        # spawn, not fork: the parent may already hold ONNX Runtime and SQLite threads, which a
        # forked child would inherit in an unknown state.
        self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, fn: Callable[..., T], *args: Any) -> Handle[T]:
        return _FutureHandle(self._pool.submit(fn, *args))

    def warm(self, fn: Callable[[Any], object], arg: Any) -> None:
        for _ in range(self.workers):
            self._pool.submit(fn, arg)  # a worker that fails here fails again on its first job

    def map_unordered(self, fn: Callable[..., T], items: Iterable[Any]) -> Iterator[tuple[int, T]]:
        futures = {self._pool.submit(fn, item): i for i, item in enumerate(items)}
        try:
            for f in cf.as_completed(futures):
                yield futures[f], f.result()
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _RayHandle(Handle[T]):
    def __init__(self, ray: Any, ref: Any) -> None:
        self._ray, self.ref = ray, ref

    def result(self) -> T:
        return self._ray.get(self.ref)  # type: ignore[no-any-return]


class RayExecutor(Executor):
    def __init__(self, address: str | None = None) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home
        try:
            # Deferred: Ray is a heavy optional dependency (the `ray` extra); typed as Any, as its
            # own annotations vary between releases.
            ray: Any = importlib.import_module("ray")
        except ImportError:
            raise ImportError("executor 'ray' needs Ray: pip install 'orbitfl[ray]'") from None
        self._ray = ray
        self._own = not ray.is_initialized()
        if self._own:
            kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
            if address is None:
                kwargs.update(include_dashboard=False, num_cpus=usable_cores())
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ValueError(
                    f"cannot join the Ray cluster at {address or 'a new local one'}: {first}"
                ) from None
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.spec = ExecutorSpec("ray", address=address)
        self._remote: dict[Callable[..., Any], Any] = {}
        self._warming: list[Any] = []

    def _task(self, fn: Callable[..., Any]) -> Any:
        task = self._remote.get(fn)
        if task is None:
            task = self._remote[fn] = self._ray.remote(num_cpus=1, max_retries=0)(fn)
        return task

    def submit(self, fn: Callable[..., T], *args: Any) -> Handle[T]:
        return _RayHandle(self._ray, self._task(fn).remote(*args))

    def warm(self, fn: Callable[[Any], object], arg: Any) -> None:
        task = self._task(fn)
        self._warming = [task.remote(arg) for _ in range(self.workers)]

    def map_unordered(self, fn: Callable[..., T], items: Iterable[Any]) -> Iterator[tuple[int, T]]:
        task = self._task(fn)
        refs = {task.remote(item): i for i, item in enumerate(items)}
        pending = list(refs)
        try:
            while pending:
                done, pending = self._ray.wait(pending, num_returns=1)
                for ref in done:
                    yield refs[ref], self._ray.get(ref)
        finally:
            for ref in pending:
                self._ray.cancel(ref)

    def close(self) -> None:
        if self._own and self._ray.is_initialized():
            self._ray.shutdown()


def make_executor(spec: ExecutorSpec | str) -> Executor:
    s = parse_executor(spec) if isinstance(spec, str) else spec
    if s.kind == "processes":
        return ProcessExecutor(s.workers)
    if s.kind == "ray":
        return RayExecutor(s.address)
    return LocalExecutor()
