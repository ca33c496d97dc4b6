"""A private run directory: 0700, everything in it 0600, whatever the launcher's umask.

The run directory holds the control sockets (anyone who can connect can pull cables), CURVE
secret keys, pid files and logs, so no other local user may open it. Every daemon and the CLI
set the umask to 077 before creating anything (that covers the ipc sockets zmq creates), and
tighten a run directory left wider by an older run, unless it is another user's or a shared
(sticky, /tmp-like) directory: that is refused, never chmod-ed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

PRIVATE_UMASK: Final = 0o077
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600


class RunDirError(OSError):
    """The run directory cannot be made private; the message says which and why."""


def private_umask() -> None:
    """From now on this process (and what it starts) creates owner-only files and sockets."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` 0700 (and missing parents), or tighten it to 0700 if it is ours."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        st = path.stat()
    except PermissionError as e:
        raise RunDirError(f"run dir {path}: permission denied ({e.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RunDirError(f"run dir {path}: not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode == DIR_MODE:
        return path
    if st.st_uid != os.geteuid():
        raise RunDirError(f"run dir {path}: owned by uid {st.st_uid}, not by us; give another")
    if mode & stat.S_ISVTX:
        # A sticky directory is shared by design (/tmp): chmod-ing it would lock others out.
        raise RunDirError(f"run dir {path}: a shared (sticky) directory; give one of its own")
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: str | os.PathLike[str], flags: int = os.O_WRONLY | os.O_CREAT) -> int:
    """Open `path` (created 0600; an existing file is tightened to 0600); returns the fd."""
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
        os.fchmod(fd, FILE_MODE)
    return fd


def write_private(path: str | os.PathLike[str], text: str) -> None:
    """Replace `path`'s content with `text`, atomically (readers see old or new), mode 0600."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(private_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as f:
        f.write(text)
    tmp.replace(path)


def unreadable(path: str | os.PathLike[str]) -> str | None:
    """Why this process cannot use the run directory `path` (None: it can, or it is absent)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except PermissionError:
        return f"run dir {path}: permission denied (a parent directory is closed to us)"
    if os.access(path, os.R_OK | os.X_OK):
        return None
    return (
        f"run dir {path}: permission denied (owned by uid {st.st_uid}, mode "
        f"{stat.S_IMODE(st.st_mode):04o}); run nicteam as the user who launched the cluster"
    )
