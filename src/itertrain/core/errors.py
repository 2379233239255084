"""Every failure itertrain reports to a user, in one family.

Each class carries the exit status of the process it ends; the command line prints the message as
one line and exits with that status (app/cli.py, in one place). Nothing is translated from one
class into another: a module raises the class that says what went wrong.

  ItertrainError            1  the base: what a user reads, never a traceback
    UsageError              2  bad input, refused before anything is written: flags, data, settings
      TaskError             2  the task's data, verifier or chat template
      SelectorError         2  a --resume_from / --resume_from_iteration value
      PlanError             2  a requested artifact that does not exist or cannot be used
      AdapterError          2  --use_peft flags or an adapter file that cannot make a PEFT run
    RecoveryError           1  a start that cannot go on from what is on disk, or an iteration that
                               cannot be committed; a resume with the right flags fixes it
      ObjectiveError        1  a checkpoint trained with another objective or reference
      AdapterMismatch       1  a checkpoint or model whose adapter does not fit this run
    LockedError             1  another run holds the experiment directory
    PeerWriteError          1  a rank could not write its part of an artifact
    GenerationError         1  the generation backend failed
    TrackerError            1  a tracker that cannot be opened
    ManifestError           1  an artifact's manifest that cannot be read (callers treat it as damage)
"""

from __future__ import annotations


class ItertrainError(Exception):
    exit_code = 1


class UsageError(ItertrainError, ValueError):
    exit_code = 2


class TaskError(UsageError):
    pass


class SelectorError(UsageError):
    pass


class PlanError(UsageError):
    pass


class RecoveryError(ItertrainError):
    pass


class AdapterError(UsageError):
    pass


class ObjectiveError(RecoveryError):
    pass


class AdapterMismatch(RecoveryError):
    pass


class LockedError(ItertrainError):
    pass


class PeerWriteError(ItertrainError):
    pass


class GenerationError(ItertrainError):
    pass


class TrackerError(ItertrainError):
    pass


class ManifestError(ItertrainError, ValueError):
    pass
