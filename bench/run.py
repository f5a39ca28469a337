"""volstack benchmarks, each printed as a ratio against a limit measured in the same run.

    .venv/bin/python bench/run.py [--quick] [--no-pg] [--profile]
"""
import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import bench_api  # noqa: E402
import bench_jobs  # noqa: E402
import loadgen  # noqa: E402

QUICK = dict(rounds=1, duration=2.5, jobs=1000, async_jobs=200, inproc=300)
FULL = dict(rounds=2, duration=6.0, jobs=3000, async_jobs=600, inproc=1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller runs: about 30 s in all")
    ap.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL job benchmark")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of in-process listZones")
    ap.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="connections per client process (default 2)")
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    logging.basicConfig(level=logging.WARNING)
    rows: list[tuple] = []
    t0 = time.monotonic()
    conns = args.procs * args.threads

    with tempfile.TemporaryDirectory(prefix="volstack-bench-") as tmp:
        tmp = Path(tmp)
        api = bench_api.ApiBench(tmp)
        try:
            vs, dn = api.round_trips(rounds=cfg["rounds"], duration=cfg["duration"], procs=args.procs,
                                     threads=args.threads)
            rows.append((f"signed listZones, HTTP, {conns} keep-alive conns", f"{vs.rate:,.0f} req/s",
                         f"{dn.rate:,.0f} req/s (do-nothing WSGI)", vs.rate / dn.rate))
            rows.append(("  client CPU per request (volstack / do-nothing)", f"{vs.client_us_per_req:,.0f} us",
                         f"{dn.client_us_per_req:,.0f} us", None))
            rows.append(("  client: build + sign one URL", f"{loadgen.sign_cost_us(api.target, {'command': 'listZones'}):,.0f} us",
                         "", None))
            us = api.in_process(cfg["inproc"], profile=args.profile)
            rows.append(("  ApiApp.handle(listZones) in-process, 1 thread", f"{1e6 / us:,.0f} req/s",
                         f"{us:,.0f} us per request", None))
            a = api.async_jobs(cfg["async_jobs"], procs=args.procs, threads=args.threads)
            async_row = (f"disableAccount via API + polling, N={a.requests}", f"{a.rate:,.0f} jobs/s", a)
        finally:
            api.stop()

        n = cfg["jobs"]
        j = bench_jobs.job_figures(f"sqlite:///{tmp / 'jobs.db'}", n)
        rows.append((f"empty jobs, SQLite, N={n}, 4 workers", f"{j['jobs']:,.0f} jobs/s",
                     f"{j['raw']:,.0f} INSERT+UPDATE pairs/s", j["jobs"] / j["raw"]))
        rows.append(("  submit phase alone (1 tx per job)", f"{j['submits']:,.0f} jobs/s", "", None))
        if a.errors:
            raise RuntimeError(f"async API run: {a.errors} failed calls or jobs")
        rows.append((async_row[0], async_row[1], "empty SQLite jobs above", a.rate / j["jobs"]))

        if not args.no_pg:
            rows += pg_rows(n)

    print()
    print_table(rows)
    print(f"\n({os.cpu_count()} CPUs, total {time.monotonic() - t0:.0f} s)")


def pg_rows(n: int) -> list[tuple]:
    try:
        from pgserver import PostgresServer
        pg = PostgresServer().start()
    except Exception as exc:      # not installed, or cannot run as the postgres user
        return [("empty jobs, PostgreSQL", "skipped", str(exc).splitlines()[0][:60], None)]
    try:
        j = bench_jobs.job_figures(pg.createdb("bench_jobs"), n)
    finally:
        pg.stop()
    return [(f"empty jobs, PostgreSQL, N={n}, 4 workers", f"{j['jobs']:,.0f} jobs/s",
             f"{j['raw']:,.0f} INSERT+UPDATE pairs/s", j["jobs"] / j["raw"]),
            ("  submit phase alone (1 tx per job)", f"{j['submits']:,.0f} jobs/s", "", None)]


def print_table(rows) -> None:
    head = ("figure", "volstack", "limit (same run)", "ratio")
    cells = [head] + [(a, b, c, "" if r is None else f"{r:.3f}") for a, b, c, r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    for k, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
