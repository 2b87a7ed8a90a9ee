"""The project's error types: each message names the key, file or step at fault, and the stage
boundary (:func:`pipeline.cli.run_stage`) prints it as one line."""


class ConfigError(ValueError):
    """An invalid params.yaml value; the message names the key, the value and what is allowed."""


class DataFileError(RuntimeError):
    """A missing, corrupt or inconsistent data file; the message names it."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names method, epoch and step."""
