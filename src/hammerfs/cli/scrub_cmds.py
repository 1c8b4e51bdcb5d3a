"""`hammer scrub`: verify every block of a volume, mounted (online, through the mount, in
the background of the mount process) or not; repair damaged data from a replica."""

from __future__ import annotations

import argparse
import os
import sys
import time

from hammerfs import quantity
from hammerfs.cli.fs_cmds import replica_spec
from hammerfs.cli.sizes import argtype, human
from hammerfs.cli.volume import add_volume_args, open_volume_device, serving_mount
from hammerfs.errors import HammerError
from hammerfs.store.scrub import DEFAULT_RATE

_rate_arg = argtype(quantity.parse_size, what="rate", minimum=0, maximum=1 << 50)
POLL_SECONDS = 0.5


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scrub", help="verify every block of a volume (mounted or not), repair from a replica",
        description="Read and verify every block reachable from the volume header (B-tree "
        "nodes and data extents) and report damage, naming the files it hit.  On a mounted "
        "volume (give its mount point, or the image while it is mounted) the scrub runs in "
        "the mount process at a limited rate so the mount stays responsive, and keeps its "
        "progress in the volume: after --stop, a crash or a reboot, `hammer scrub` continues "
        "where it was.  Interrupting this command leaves the scrub running (see --status).  "
        "Damaged data is repaired from a replica (--from, the mount's --heal-from, or the "
        "other end of the service's [[stream]]): the same record version, checked against "
        "the checksum this volume expects.  Exits 1 if damage remains.")
    p.add_argument("volume", metavar="VOLUME|MOUNTPOINT",
                   help="image file, block device, or a mounted volume's mount point")
    p.add_argument("--rate", type=_rate_arg, metavar="RATE",
                   help=f"read at most RATE bytes per second (K/M/G suffixes; default "
                   f"{human(DEFAULT_RATE)}/s on a mounted volume, unlimited otherwise; 0: "
                   "no limit): the scrub's priority, as zfs's scrub tunables")
    p.add_argument("--from", dest="heal_from", metavar="REPLICA",
                   help="repair damaged data from this replica of the PFS: a path in a "
                   "mounted volume (mount point or PFS softlink), VOLUME[:PFS], or "
                   "[user@]host:PATH over ssh (`hammer ssh-remote mirror-read` allows it)")
    p.add_argument("-p", dest="port", type=int, metavar="PORT",
                   help="ssh port of a remote --from")
    p.add_argument("--restart", action="store_true",
                   help="start from the beginning instead of continuing an interrupted scrub")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--status", action="store_true",
                      help="show the scrub running in the mount (or the last one) and return")
    mode.add_argument("--stop", action="store_true",
                      help="stop the scrub running in the mount (the next one continues)")
    add_volume_args(p)
    p.set_defaults(func=cmd_scrub)


def cmd_scrub(args: argparse.Namespace) -> int:
    mount = serving_mount(args.volume)
    if mount is None:
        if args.status or args.stop:
            raise HammerError(f"{args.volume} is not mounted: --status and --stop are for "
                              "a scrub running in a mount")
        return _offline(args)
    from hammerfs.control import ControlClient
    client = ControlClient.for_mount(mount, timeout=None)
    where = mount.mountpoint
    if args.status:
        return _print_status(where, client.call("scrub-status"), final=False)
    if args.stop:
        st = client.call("scrub-stop")
        print(f"scrub {where}: " + ("stopped at " + _pct(st) + "; `hammer scrub` continues it"
                                    if st["state"] == "stopped" else f"not running ({st['state']})"))
        return 0
    st = client.call("scrub", rate=args.rate, heal_from=replica_spec(args.heal_from),
                     port=args.port, restart=args.restart)
    if st.get("resumed") and not args.restart:
        print(f"scrub {where}: continuing the interrupted scrub at "
              f"{100 * st.get('resumed_at', 0):.1f}%", file=sys.stderr)
    tty = sys.stderr.isatty()
    polled = time.monotonic()
    try:
        while st["state"] == "running":
            if tty:
                sys.stderr.write("\r" + _progress(st) + "\033[K")
                sys.stderr.flush()
            # quickly at first: a small volume's scrub ends within a second
            time.sleep(POLL_SECONDS if time.monotonic() - polled > 2 else 0.05)
            st = client.call("scrub-status")
    except KeyboardInterrupt:
        if tty:
            sys.stderr.write("\n")
        print(f"hammer: the scrub goes on in the mount: `hammer scrub --status {where}`, "
              f"`hammer scrub --stop {where}`", file=sys.stderr)
        return 130
    if tty:
        sys.stderr.write("\r\033[K")
    return _print_status(where, st, final=True)


def _pct(st: dict) -> str:
    return f"{100 * st.get('fraction', 0):.1f}%"


def _progress(st: dict) -> str:
    eta = st.get("eta")
    text = (f"scrub: {_pct(st)}, {human(st['bytes'])} of about {human(st['total'])}, "
            f"{human(st['rate'])}/s")
    if eta is not None:
        text += f", ETA {int(eta) // 60}:{int(eta) % 60:02d}"
    return text + f", {st['found']} damaged"


def _print_status(where: str, st: dict, *, final: bool) -> int:
    state = st["state"]
    if st.get("error"):
        raise HammerError(f"scrub of {where} failed: {st['error']}")
    if state == "none":
        print(f"scrub {where}: no scrub has run on this volume")
        return 0
    if state == "running" and not final:
        print(f"scrub {where}: running, " + _progress(st))
    elif state == "stopped":
        print(f"scrub {where}: stopped at {_pct(st)} (`hammer scrub {where}` continues it)")
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st["finished_ns"] / 1e9))
        print(f"scrub {where}: finished {when}: {st['nodes']} B-tree nodes, "
              f"{st['records']} records, {human(st['bytes'])} verified")
    return _print_damage(st)


def _print_damage(st: dict) -> int:
    """One line per damaged block, then the verdict; 1 if damage remains."""
    remaining = 0
    for d in st.get("damage", []):
        if d["repaired"]:
            how = "" if d["kind"] == "node" else " (rewritten from the replica)"
            print(f"REPAIRED: {d['path']}: {d['message']}{how}")  # a node's says its source
        else:
            remaining += 1
            print(f"DAMAGED: {d['path']}: {d['message']}")
    for err in st.get("errors", []):
        if not any(err == d["message"] for d in st.get("damage", [])):
            remaining += 1
            print(f"DAMAGED: {err}")
    remaining = max(remaining, st.get("unrepairable", 0))
    repaired = sum(1 for d in st.get("damage", []) if d["repaired"])
    if not remaining and not repaired:
        print("no damage found")
    elif not remaining:
        print(f"{repaired} damaged block(s) found, all repaired")
    else:
        print(f"{remaining} problem(s) found" + (f", {repaired} repaired" if repaired else ""))
    return 1 if remaining else 0


def _offline(args: argparse.Namespace) -> int:
    """An unmounted volume: scrubbed by this process (read-only unless healing)."""
    from hammerfs.control.scrubbing import describe
    from hammerfs.store import Store
    from hammerfs.store.scrub import Scrubber

    heal = args.heal_from is not None
    dev = open_volume_device(args.volume, args, readonly=not heal)
    try:
        store = Store.open(dev, readonly=not heal)
    except BaseException:
        dev.close()
        raise
    healer = None
    try:
        if heal:
            from hammerfs.cli.mirror_cmds import healer_factory
            healer = healer_factory(os.path.realpath(args.volume))(store, args.heal_from,
                                                                   args.port)
        scrubber = Scrubber(store, rate=args.rate, healer=healer, restart=args.restart,
                            leaks=True)
        tty = sys.stderr.isatty()

        def progress(sc: Scrubber) -> None:
            if tty:
                sys.stderr.write(f"\rscrub: {100 * sc.fraction():.1f}%\033[K")
                sys.stderr.flush()
        report = scrubber.run(progress)
        if tty:
            sys.stderr.write("\r\033[K")
        damage = describe(store, 0, "", report.damage)
    finally:
        if healer is not None:
            healer.close()
        store.close()
    print(f"scrub {args.volume}: {report.nodes} B-tree nodes, {report.records} records, "
          f"{report.extents} data extents ({human(report.data_bytes)}) verified")
    return _print_damage({"damage": damage, "errors": report.errors,
                          "unrepairable": report.unrepairable})
