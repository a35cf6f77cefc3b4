"""petcdctl: the etcdctl-compatible command line (`petcdctl`, `python -m petcd.ctl`)."""

from petcd.ctl.main import main, run

__all__ = ["main", "run"]
