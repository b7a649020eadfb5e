"""A pod's live state, from its catalog row and /proc alone (light: `zap ps` imports it)."""

from __future__ import annotations

from zapckpt.system import procinfo


def live_state(pod) -> str:
    """running, frozen (its init stopped: a dump that never finished; `zap recover`), stopped
    (as asked) or dead (it ended by itself)."""
    if procinfo.is_alive(pod.init_pid, pod.init_starttime):
        st = procinfo.read_stat(pod.init_pid)
        return "frozen" if st is not None and st.state in "Tt" else "running"
    return "stopped" if pod.desired_state == "stopped" else "dead"
