"""Alarms (NOSPACE, CORRUPT): raised and disarmed through Raft, kept in the backend."""

from __future__ import annotations

from petcd import log
from petcd.proto.etcdserverpb import rpc_pb2

ALARM_BUCKET = "alarm"
NOSPACE = rpc_pb2.AlarmType.NOSPACE

_log = log.get("alarm")


class AlarmStore:
    """The active alarms, keyed by (member id, alarm type); persisted in the alarm bucket."""

    def __init__(self, backend) -> None:
        self._backend = backend
        self.reload()

    def reload(self) -> None:
        self._alarms: dict[tuple[int, int], rpc_pb2.AlarmMember] = {}
        for _k, v in self._backend.range(ALARM_BUCKET, b""):
            a = rpc_pb2.AlarmMember.FromString(bytes(v))
            self._alarms[(a.memberID, a.alarm)] = a
        self._changed()

    def active(self, member: int, alarm: int) -> bool:
        return (member, alarm) in self._alarms

    def _changed(self) -> None:
        # Read on every write's apply: kept as a plain attribute, not recomputed.
        self.nospace = any(t == NOSPACE for _m, t in self._alarms)

    def list(self, member: int = 0, alarm: int = 0) -> list[rpc_pb2.AlarmMember]:
        return [
            a
            for (m, t), a in sorted(self._alarms.items())
            if (not member or m == member) and (not alarm or t == alarm)
        ]

    def apply(self, req: rpc_pb2.AlarmRequest) -> rpc_pb2.AlarmResponse:
        """Apply a committed AlarmRequest; the response lists the alarms it changed."""
        resp = rpc_pb2.AlarmResponse()
        key = (req.memberID, req.alarm)
        bkey = b"%016x:%d" % key
        if req.action == rpc_pb2.AlarmRequest.ACTIVATE:
            if req.alarm != rpc_pb2.AlarmType.NONE and key not in self._alarms:
                a = rpc_pb2.AlarmMember(memberID=req.memberID, alarm=req.alarm)
                self._alarms[key] = a
                self._changed()
                self._backend.put(ALARM_BUCKET, bkey, a.SerializeToString())
                _log.warning(
                    "alarm raised",
                    alarm=rpc_pb2.AlarmType.Name(req.alarm),
                    **{"from": f"{req.memberID:x}"},
                )
                resp.alarms.append(a)
        elif req.action == rpc_pb2.AlarmRequest.DEACTIVATE:
            a = self._alarms.pop(key, None)
            if a is not None:
                self._changed()
                self._backend.delete(ALARM_BUCKET, bkey)
                _log.warning(
                    "alarm disarmed",
                    alarm=rpc_pb2.AlarmType.Name(req.alarm),
                    **{"from": f"{req.memberID:x}"},
                )
                resp.alarms.append(a)
        else:
            resp.alarms.extend(self.list())
        return resp
