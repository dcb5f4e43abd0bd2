"""What the `luigi` command prints when it runs luigi_phot tasks.

Luigi's own console logging prints every scheduling step at DEBUG and INFO
("Informed scheduler that task ... has status PENDING", "Running ...", "Done")
- hundreds of lines for one dataset. luigi_phot's console handler prints:

- warnings and errors (a failed stage in one line, see ``tasks.base``);
- luigi_phot's own console lines (the manager's selection and counts), logged to
  :data:`CONSOLE_LOGGER`;
- Luigi's execution summary of the command itself (the workers that ReduceDataset
  and ReductionManager run beneath themselves print none: their failures reach
  the command's summary and the log as one line each).

Luigi's log level brings the detail back: ``--log-level INFO`` (or ``DEBUG``) on
the command line, or ``log_level`` in the ``[core]`` section of the Luigi
configuration, prints every record from that level, as Luigi does by default. (From Python, ``luigi.build(..., log_level=...)`` does not
reach the handler, which reads the command line and the configuration: set
``[core] log_level`` or configure logging yourself.)

The handler is installed by Luigi itself, from :data:`LOGGING_CONF` (a
``logging.config.fileConfig`` file) named by ``[core] logging_conf_file``. The
package sets that option, and ``log_level = WARNING``, when the user's Luigi
configuration sets neither (:func:`set_luigi_defaults`); a configuration that
names its own logging file, sets ``no_configure_logging`` or has a ``[logging]``
section (TOML configurations) is left alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["LOGGING_CONF", "CONSOLE_LOGGER", "ConsoleHandler", "console_logger", "set_luigi_defaults"]

#: The logging configuration Luigi reads through ``[core] logging_conf_file``.
LOGGING_CONF = Path(__file__).with_name("console_logging.ini")
#: Lines luigi_phot means for the console at INFO (a child of Luigi's console logger,
#: so any logging configuration that shows Luigi's console shows them too).
CONSOLE_LOGGER = "luigi-interface.luigi_phot"
_SUMMARY_START = "\n===== Luigi Execution Summary ====="


def console_logger() -> logging.Logger:
    return logging.getLogger(CONSOLE_LOGGER)


def _configured_level() -> int:
    """Luigi's log level for this command (``--log-level``, else ``[core] log_level``)."""
    try:
        from luigi.interface import core

        return logging.getLevelName(core().log_level)
    except Exception:  # no command line being parsed, an unknown level: stay quiet
        return logging.WARNING


class _Quiet(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            return True
        if record.levelno < logging.INFO:
            return False
        if record.name == CONSOLE_LOGGER:
            return True
        message = record.msg if isinstance(record.msg, str) else ""
        return message.startswith(_SUMMARY_START)


class ConsoleHandler(logging.StreamHandler):
    """Luigi's console handler (standard error), quiet below Luigi's log level except
    for luigi_phot's console lines and the command's execution summary."""

    def __init__(self, level: int | str | None = None):
        super().__init__()
        threshold = _configured_level() if level is None else logging.getLevelName(level) if isinstance(
            level, str) else level
        self.addFilter(_Quiet(threshold if isinstance(threshold, int) else logging.WARNING))


def set_luigi_defaults(cfg) -> None:
    """Quiet console logging (:data:`LOGGING_CONF`, log level WARNING) unless the user's
    Luigi configuration `cfg` chooses its own."""
    if not cfg.has_section("core"):
        cfg.add_section("core")
    if (cfg.has_option("core", "logging_conf_file") or cfg.has_option("core", "no_configure_logging")
            or cfg.has_section("logging")):  # [logging]: a TOML configuration's own dictConfig
        return
    cfg.set("core", "logging_conf_file", str(LOGGING_CONF).replace("%", "%%"))
    if not cfg.has_option("core", "log_level"):
        cfg.set("core", "log_level", "WARNING")
