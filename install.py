"""Run by the WebUI at start-up (unless --skip-install): checks the host, installs nothing it already provides.

ToDo needs only torch, which the WebUI brings; this never installs or upgrades torch. It says clearly when the
host's torch is too old for the hooks (`register_forward_pre_hook(..., with_kwargs=True)`, torch >= 2.0).
"""

import importlib.metadata

MIN_TORCH = (2, 0)


def torch_version():
    """The installed torch version as (major, minor), or None when torch is missing; fast, no torch import."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    major, minor = [*version.split("+")[0].split("."), "0"][:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def check_host():
    """One clear console line when ToDo cannot work on this host; silent when everything is in place."""
    version = torch_version()
    if version is None:
        print("[ToDo] torch is not installed; the WebUI installs it, ToDo does not.")
    elif version < MIN_TORCH:
        print(f"[ToDo] torch {version[0]}.{version[1]} is too old: ToDo needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} "
              "(forward pre-hooks with kwargs). Update the WebUI's torch; ToDo cannot hook the U-Net until then.")


check_host()
