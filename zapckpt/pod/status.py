"""A pod's live state, from its catalog row and /proc alone (light: `zap ps` imports it)."""

from __future__ import annotations

from zapckpt.system import procinfo


def live_state(pod) -> str:
    """running, paused (`zap pause`), frozen (its init stopped otherwise: a dump that never
    finished; `zap recover`), stopped (as asked) or dead (it ended by itself)."""
    if procinfo.is_alive(pod.init_pid, pod.init_starttime):
        st = procinfo.read_stat(pod.init_pid)
        if st is not None and st.state in "Tt":
            return "paused" if pod.desired_state == "paused" else "frozen"
        return "running"
    return "stopped" if pod.desired_state == "stopped" else "dead"
