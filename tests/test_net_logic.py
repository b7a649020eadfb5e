"""Logic above the real network parts: `-p` specs, the NAT table's text, CRIU's lock-table names."""

from __future__ import annotations

import pytest

from zapckpt.common.errors import UsageError
from zapckpt.net import nftables, publish


def test_publish_specs():
    assert publish.parse("8080:80") == {"host_ip": None, "host_port": 8080, "pod_port": 80, "proto": "tcp"}
    assert publish.parse("127.0.0.1:53:5353/udp") == {"host_ip": "127.0.0.1", "host_port": 53, "pod_port": 5353,
                                                      "proto": "udp"}  # fmt: skip
    for bad in ("80", "a:80", "0:80", "80:65536", "1.2.3:80:80", "80:80/sctp", "1:2:3:4", ""):
        with pytest.raises(UsageError):
            publish.parse(bad)
    with pytest.raises(UsageError, match="twice"):
        publish.parse_all(["8080:80", "8080:81"])
    assert len(publish.parse_all(["8080:80", "8080:80/udp", "127.0.0.1:8081:80"])) == 3
    assert publish.render(publish.parse("127.0.0.1:53:5353/udp")) == "127.0.0.1:53:5353/udp"


def test_nat_table_text():
    text = nftables.render("zap0", "10.89.0.0/24", [("10.89.0.2", publish.parse("8080:80")),
                                                    ("10.89.0.3", publish.parse("127.0.0.1:5353:53/udp"))])  # fmt: skip
    assert text.startswith("table ip zapckpt_zap0\ndelete table ip zapckpt_zap0\n")  # replaced atomically
    assert text.count("fib daddr type local tcp dport 8080 dnat to 10.89.0.2:80") == 2  # prerouting and output
    assert text.count("ip daddr 127.0.0.1 udp dport 5353 dnat to 10.89.0.3:53") == 2
    assert 'ip saddr 10.89.0.0/24 ip daddr != 10.89.0.0/24 oifname != "zap0" masquerade' in text
    assert nftables.table_name("zt-a.b") == "zapckpt_zt_a_b"


def test_criu_lock_table_name_is_cut_as_criu_cuts_it():
    run_id = "6ff68d85-8a97-4d7b-a1c3-0123456789ab"
    assert nftables.criu_lock_table(run_id) == "CRIU-6ff68d85-8a97-4d7b-a1"
    assert len("inet " + nftables.criu_lock_table(run_id)) == 31
