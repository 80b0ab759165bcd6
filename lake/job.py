"""What every lake job shares: Hydra entry, run identity, run records and exit codes."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lake import provenance, runs
from lake.errors import ConfigError, FileProblem, LakeloomError, is_lance_error, lance_cause
from lake.plugin import config_search_path
from lake.storage import SECRET_KEYS, redact, redact_text

if TYPE_CHECKING:
    from lake.store import Lake

log = logging.getLogger("lakeloom")

CONFIG_PATH = "pkg://conf"


def config_yaml(cfg: Any) -> str:
    """The resolved config as YAML, every credential (``lake.storage_options`` secrets, any
    nested ``aws_secret_access_key`` ...) replaced by ``***``: what run records and a run's
    ``config.yaml`` hold."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    return OmegaConf.to_yaml(OmegaConf.create(redact(plain)))


def redact_secrets(text: str, options: Mapping[str, Any] | None = None) -> str:
    """``text`` with the secret values of ``options`` and of the ``AWS_*`` environment
    variables replaced by ``***`` (an error message of a library may echo them)."""
    return redact_text(text, {**os.environ, **(options or {})})


def _cfg_storage_options(cfg: Any) -> dict[str, Any]:
    """``lake.storage_options`` of a job config as given (empty when absent or unreadable)."""
    try:
        given = cfg.lake.storage_options
        return {str(k): v for k, v in (given or {}).items()}
    except Exception:  # a job without a lake (or an unresolvable one)
        return {}


def _secret_overrides() -> bool:
    """Whether the running Hydra job's command-line overrides set a credential."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # not inside a Hydra job
        return False
    names = (o.split("=", 1)[0].rsplit(".", 1)[-1] for o in overrides)
    return any(n in SECRET_KEYS or n.lower() in SECRET_KEYS for n in names)


@dataclass
class RunContext:
    """Identity of one job run: id, resolved config and its hash."""

    job: str
    run_id: str
    config_yaml: str
    config_hash: str
    started_at: datetime = field(default_factory=provenance.now)

    @classmethod
    def from_config(cls, job: str, cfg: Any) -> RunContext:
        """Build the context from a Hydra config (resolving it validates interpolations)."""
        from omegaconf.errors import OmegaConfBaseException

        try:
            yaml = config_yaml(cfg)
        except OmegaConfBaseException as exc:
            raise ConfigError(str(exc)) from exc
        return cls(job, provenance.new_run_id(job), yaml, provenance.config_hash(yaml))

    def record(self, status: str, **extra: Any) -> dict[str, Any]:
        """A row for the ``runs`` table."""
        return {
            "run_id": self.run_id,
            "job": self.job,
            "status": status,
            "started_at": self.started_at,
            "finished_at": None if status == runs.RUNNING else provenance.now(),
            "config_yaml": self.config_yaml,
            "config_hash": self.config_hash,
            "lakeloom_version": provenance.lakeloom_version(),
            **runs.owner(),
            **extra,
        }


@dataclass(frozen=True)
class JobResult:
    """What a job function may return to :func:`hydra_job`: its exit ``code`` and a
    ``value`` the Hydra app returns (a ``--multirun`` sweeper optimises it)."""

    code: int
    value: Any = None


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived during a job: it unwinds like Ctrl-C, so the run records
    ``interrupted`` (see :func:`run_record`)."""


# a runs row keeps one line of the reason; a filter or path can make that line huge
MAX_ERROR_CHARS = 1000


def error_line(exc: BaseException, lake_uri: str | None = None) -> str:
    """The one-line reason a job ended with ``exc``, as :func:`hydra_job` prints it after
    ``lakeloom:`` (a file problem names its file; another error its type)."""
    if isinstance(exc, Terminated):
        return "terminated (SIGTERM)"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(exc, ConfigError):
        text = f"invalid configuration: {exc}"
    elif _is_omegaconf_error(exc):
        text = f"invalid configuration: {config_problem(exc)}"
    elif isinstance(exc, LakeloomError):
        text = str(exc)
    else:
        problem = file_problem(exc, lake_uri)
        text = str(problem) if problem is not None else f"{type(exc).__name__}: {exc}"
    lines = text.strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:MAX_ERROR_CHARS]


def _is_omegaconf_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("omegaconf")


def config_problem(exc: BaseException) -> str:
    """One line for an OmegaConf error met while a job reads its config: a key left
    ``???`` names the override that sets it."""
    from omegaconf.errors import MissingMandatoryValue

    key = getattr(exc, "full_key", None)
    if isinstance(exc, MissingMandatoryValue) and key:
        return f"{key} is required: add {key}=... to the command"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` in the main thread.

    Only when SIGTERM has its default action (kill) in the main thread: a handler someone
    else installed is left alone. A forked child that inherited the handler dies as usual.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    pid = os.getpid()

    def terminate(signum: int, frame: Any) -> None:
        if os.getpid() != pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def run_record(
    lake: Lake,
    ctx: RunContext,
    inputs: dict[str, Any] | None = None,
    announce: bool = True,
    creates: bool = False,
) -> Iterator[None]:
    """Keep the run's row in the lake's ``runs`` table true around a job's work.

    Records ``running`` with ``inputs`` on entry (``announce=False``: no row until the
    job records one, for a job that must not write before it ran, e.g. the doctor). The
    job records ``finished`` itself as the last step of the block. An exception records
    ``failed`` (``interrupted`` for Ctrl-C and SIGTERM, see :class:`Terminated`) with the
    one-line reason in ``error`` (:func:`error_line`) and propagates; when that record
    cannot be written either, a warning says so and the job's own error still propagates.

    Nothing is recorded into a lake that does not exist (the job fails with its own
    message, and no lake folder or ``runs`` table is left behind), except by a job that
    ``creates`` the lake (ingest), which announces its run in a new lake too.
    """
    with _sigterm_unwinds():
        if announce and (creates or lake.present()):
            lake.record_run(ctx.record(runs.RUNNING, inputs=inputs))
        try:
            yield
        except BaseException as exc:
            status = runs.INTERRUPTED if isinstance(exc, KeyboardInterrupt) else runs.FAILED
            reason = redact_secrets(error_line(exc, lake.uri), lake.storage_options)
            try:
                if lake.present():
                    lake.record_run(ctx.record(status, inputs=inputs, error=reason))
            except Exception as failed:
                log.warning("could not record run %s as %s: %s", ctx.run_id, status, failed)
            raise


DEBUG_ENV = "LAKELOOM_DEBUG"


def file_problem(exc: BaseException, fallback: str | None = None) -> FileProblem | None:
    """A :class:`FileProblem` naming the file and cause of an OSError or a Lance error.

    The file is the OSError's ``filename``, else the innermost open file object in the
    traceback (a write that hit a full disk names no file), else ``fallback`` (the lake).
    None for other errors, which keep their traceback.
    """
    if isinstance(exc, OSError):
        cause = exc.strerror or str(exc) or type(exc).__name__
        if is_lance_error(exc):
            cause = lance_cause(exc)
        path = exc.filename or _open_file_in(exc.__traceback__) or fallback or "?"
        if exc.filename2:
            path = f"{path} -> {exc.filename2}"
        return FileProblem(path, cause)
    if isinstance(exc, RuntimeError | ValueError) and is_lance_error(exc):
        return FileProblem(fallback or "the lake", lance_cause(exc))
    return None


def traceback_locals(tb: Any) -> Iterator[Any]:
    """The local values of every frame of a traceback, innermost frame first.

    Errors raised deep in a library often name no file; the frame that failed still
    holds it (an open file object, a checkpoint path).
    """
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        yield from frame.f_locals.values()


def _open_file_in(tb: Any) -> str | None:
    """Name of the innermost file object held by a frame of the traceback."""
    import io

    for value in traceback_locals(tb):
        if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
            return value.name
    return None


def _lake_uri(cfg: Any) -> str | None:
    try:
        return str(cfg.lake.uri)
    except Exception:  # a job without a lake (or an unresolvable one)
        return None


def _debug_traceback(options: Mapping[str, Any] | None = None) -> None:
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        print(redact_secrets(traceback.format_exc(), options), end="", file=sys.stderr)


class _QuietFilter(logging.Filter):
    """Drops third-party adverts (Lightning's "💡 Tip" lines) and open_clip's INFO chatter
    (it logs on the root logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if record.name.startswith("lightning") and str(record.msg).startswith("💡 Tip"):
            return False
        return not (record.name == "root" and f"{os.sep}open_clip{os.sep}" in record.pathname)


_QUIET = _QuietFilter()


def quiet_logs() -> None:
    """Each log line once, no adverts, open_clip below warning (idempotent).

    Lightning adds a ``INFO: ...`` console handler to the ``lightning`` logger when it is
    imported, while its records also reach the root handler a job's Hydra logging set up:
    every line twice. With a root handler, Lightning's own is removed. Call it again after
    importing Lightning.
    """
    root = logging.getLogger()
    if _QUIET not in root.filters:
        root.addFilter(_QUIET)  # open_clip's logging.info(...) goes through root directly
    for handler in root.handlers:
        if _QUIET not in handler.filters:
            handler.addFilter(_QUIET)
    lightning = logging.getLogger("lightning")
    for handler in list(lightning.handlers):
        if root.handlers and type(handler) is logging.StreamHandler:
            lightning.removeHandler(handler)
        elif _QUIET not in handler.filters:
            handler.addFilter(_QUIET)
    for name in ("lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if _QUIET not in handler.filters:
                handler.addFilter(_QUIET)


def _run_job(fn: Callable[[Any], int | JobResult | None], cfg: Any) -> Any:
    """Run ``fn(cfg)`` as :func:`hydra_job` promises: errors become a line and a status."""
    quiet_logs()
    value = None

    def say(text: str) -> str:  # a library's message may echo the lake's keys
        return "lakeloom: " + redact_secrets(text, _cfg_storage_options(cfg))

    try:
        result = fn(cfg)
        if isinstance(result, JobResult):
            code, value = result.code, result.value
        else:
            code = result or 0
    except ConfigError as exc:
        _debug_traceback(_cfg_storage_options(cfg))
        print(say(f"invalid configuration: {exc}"), file=sys.stderr)
        code = 2
    except LakeloomError as exc:
        _debug_traceback(_cfg_storage_options(cfg))
        print(say(str(exc)), file=sys.stderr)
        code = 1
    except Exception as exc:
        if _is_omegaconf_error(exc):  # e.g. a required key left ??? (source.path)
            _debug_traceback(_cfg_storage_options(cfg))
            print(say(f"invalid configuration: {config_problem(exc)}"), file=sys.stderr)
            sys.exit(2)
        problem = file_problem(exc, _lake_uri(cfg))
        if problem is None:
            if not _secret_overrides():
                raise
            # Hydra would log the command's overrides with the error, keys included
            options = _cfg_storage_options(cfg)
            print(redact_secrets(traceback.format_exc(), options), file=sys.stderr)
            sys.exit(1)
        _debug_traceback(_cfg_storage_options(cfg))
        print(say(str(problem)), file=sys.stderr)
        code = 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM in a run_record block
        _debug_traceback(_cfg_storage_options(cfg))
        print(f"lakeloom: {error_line(exc)}", file=sys.stderr)
        code = 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    if code:
        sys.exit(code)
    return value


def _light_logging(job_logging: str | None) -> bool:
    """Set up logging as Hydra's ``hydra/job_logging`` option would; False for an option
    only Hydra knows."""
    if job_logging == "none":
        return True
    if job_logging == "stdout":  # hydra/conf/hydra/job_logging/stdout.yaml
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root = logging.getLogger()
        root.setLevel(logging.INFO)
        root.handlers = [handler]
        return True
    return False


def hydra_job(
    config_name: str, light: bool = False
) -> Callable[[Callable[[Any], int | JobResult | None]], Callable[[], Any]]:
    """Make ``fn(cfg) -> exit code`` (or a :class:`JobResult`, whose value the Hydra app
    returns) a Hydra app reading ``conf/<config_name>.yaml``; ``main.__wrapped__`` is ``fn``.

    Adds the config search path of third-party plugins, and turns lakeloom errors (and
    the file errors :func:`file_problem` recognises: OSError, a corrupt lake) into a
    one-line message and an exit status (2 for config errors, 1 otherwise; 130 for Ctrl-C,
    143 for SIGTERM during a :func:`run_record` block). With ``LAKELOOM_DEBUG=1`` the
    traceback is printed above that line.

    ``light``: a command line of plain ``key=value`` overrides is composed without Hydra
    (:func:`lake.compose.compose_light`, the same config, a fast start) and lance is
    imported without pandas (:func:`lake.compose.import_lance`); any other command line
    goes through Hydra. Hydra itself is imported only when used.
    """

    def wrap(fn: Callable[[Any], int | JobResult | None]) -> Callable[[], Any]:
        @functools.cache
        def hydra_entry() -> Callable[[], Any]:
            import hydra

            @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)
            def entry(cfg: Any) -> Any:
                return _run_job(fn, cfg)

            return entry

        @functools.wraps(fn)
        def main() -> Any:
            folder = os.environ.get("LAKELOOM_CONFIG_DIR")
            if light:
                from lake.compose import compose_light, import_lance

                composed = compose_light(config_name, sys.argv[1:])
                if composed is not None and _light_logging(composed.job_logging):
                    import_lance()
                    return _run_job(fn, composed.cfg)
            # LAKELOOM_CONFIG_DIR: read conf/ from that folder instead of the installed
            # package (a copy of the project, e.g. a DVC pipeline run elsewhere)
            if folder and not any(a.startswith(("-cp", "--config-path")) for a in sys.argv):
                sys.argv.append(f"--config-path={Path(folder).resolve()}")
            extra = config_search_path()
            if extra and not any(a.startswith("hydra.searchpath") for a in sys.argv):
                sys.argv.append(f"hydra.searchpath=[{','.join(extra)}]")
            return hydra_entry()()

        return main

    return wrap
