"""Test workload: SQLite in WAL mode, as the many programs that embed it use it.

`writer`: inserts rows one transaction at a time into data.db (in its cwd), counting them in
memory; on SIGTERM it writes that count to writer.count and exits. `reader`: keeps a connection
open and reads the table now and then (so it holds its locks on data.db-shm, as a reader does).
If a restore loses the readers' and the writer's locks, the next connection believes it is
alone, checkpoints the WAL and deletes it while the writer goes on writing into the deleted
file: the writer's count and `SELECT count(*)` then differ."""

import os
import signal
import sqlite3
import sys
import time

mode = sys.argv[1]
db = sqlite3.connect("data.db", isolation_level=None, timeout=30)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS t (i INTEGER PRIMARY KEY, v TEXT)")
if mode == "writer":
    n = db.execute("SELECT count(*) FROM t").fetchone()[0]
    stop = False

    def done(*_):
        global stop
        stop = True

    signal.signal(signal.SIGTERM, done)
    print(f"writer starting at {n}", flush=True)
    while not stop:
        db.execute("INSERT INTO t (v) VALUES (?)", ("x" * 100,))
        n += 1
        time.sleep(0.002)
    db.close()
    with open("writer.count.tmp", "w") as f:
        f.write(f"{n}\n")
    os.rename("writer.count.tmp", "writer.count")
else:
    while True:
        db.execute("BEGIN")
        db.execute("SELECT count(*) FROM t").fetchone()
        db.execute("COMMIT")
        time.sleep(0.05)
