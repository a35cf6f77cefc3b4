"""Versions: the etcd release petcd is compatible with, and petcd's own."""

ETCD_VERSION = "3.4.23"  # what Status and --version report: tools gate features on it
CLUSTER_VERSION = "3.4"  # the cluster version set at bootstrap (major.minor)
PETCD_VERSION = "0.1.0"
__version__ = PETCD_VERSION
