"""The errors that are a user's mistake rather than a bug in this package.

A console script prints these as one line and exits 2 (`cli.run`); any other
exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Something the user asked for or gave cannot work (config, data, paths, run folder)."""


class ConfigError(UserError, ValueError):
    """A config file or override names an unknown field or has a bad value."""


class DatasetError(UserError, ValueError):
    """The dataset description has rows that cannot be trained on."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class WeightsError(UserError, ValueError):
    """A weights file the user named cannot be read, or does not fit the model."""


class ClusterError(UserError):
    """A worker of a multi-worker cluster stopped or cannot be reached (not a bug
    of this process: it cannot go on without its peers)."""

    @classmethod
    def peer_left(cls, message, kept):
        """From the message of TensorFlow's `UnavailableError`, which a step's
        collectives raise when a peer left (stopped, killed, preempted); `kept`
        says what the run keeps ("its last commit")."""
        said = [line.strip() for line in str(message).splitlines() if line.strip()]
        reason = next((line for line in said if "aborted by" in line), said[0] if said else "")
        return cls(f"A worker of the cluster stopped or cannot be reached ({reason}); this one "
                   f"stops too. The run keeps {kept}: start every worker again with the same "
                   "command to resume.")


class FolderError(UserError):
    """A folder the user named cannot be made or written in (a file in its way, no
    permission, a read-only file system, a full disk or quota)."""
