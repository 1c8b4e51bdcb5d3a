"""The `--help` text every command needs besides its options: a one-paragraph description
(for commands whose module does not give one next to its parser) and examples (for every
command).  ``apply(parser)`` puts them in place after the command modules registered their
subcommands; ``tests/cli/test_help.py`` checks that no command lacks either and that every
option is explained."""

from __future__ import annotations

import argparse
import difflib

# The remote syntax and environment of every mirror command.
REMOTE = ("Either side may be [user@]host:PATH: the command then runs `hammer` there over ssh "
          "(`ssh [-p PORT] [-l USER] HOST hammer ...`).  $HAMMER_RSH replaces `ssh` and may "
          "carry options (HAMMER_RSH='ssh -i /root/.ssh/backup_key'); $HAMMER_REMOTE_CMD "
          "replaces the remote `hammer` (e.g. 'python3 -m hammerfs').  Restrict the key on "
          "the remote side with `hammer ssh-remote` (see its help).")

DESCRIPTIONS = {
    "umount": "Unmount a hammerfs mount point: the mount process commits what is pending, "
              "closes the volume (releasing its lock) and exits; the command returns once it "
              "has.  A busy mount (a process has a file open or its working directory "
              "inside) is refused with the holders named.",
    "synctid": "Commit everything pending and print the TID of the committed state: a path "
               "ending in @@<that TID> shows the PFS exactly as it is now, forever (until "
               "pruned).  Works on a mount (any path inside it) or an unmounted "
               "VOLUME[:PFS].",
    "history": "List every version of each PATH: the TID that created it, its time and size; "
               "the current version is marked.  Read any version as PATH@@<TID>, or restore "
               "one with `hammer undo`.",
    "snapshot": "Take a snapshot of the PFS that PATH is in: a snapshot record (listed by "
                "snapls, kept by prune) and, inside a mount, a softlink "
                "snap-YYYYMMDD-HHMM in DIR (default: the PFS's snapshots directory, else the "
                "mount point) pointing at MOUNTPOINT/@@0x<tid>.  The link target is always "
                "absolute.  On an unmounted VOLUME[:PFS] only the record is made and its TID "
                "printed.",
    "snapls": "List the snapshot records of the PFS that PATH is in: TID, time, note.",
    "snaprm": "Remove snapshots: a snapshot softlink (its record and the link), a TID (of the "
              "PFS of the current directory), or PATH TID... (those TIDs of PATH's PFS).  "
              "The history they kept is freed by the next prune.",
    "viconfig": "Edit the cleanup config of the PFS that PATH is in with $EDITOR (vi if "
                "unset); the edited text is checked before it is stored.  See `hammer "
                "config --help` for the format.",
    "pfs-status": "Show the PFS descriptor of each PATH (a mount root or a PFS softlink) or "
                  "VOLUME[:PFS]: id, master or slave, label, shared-uuid (a slave needs its "
                  "master's), unique-uuid, sync-beg/sync-end TIDs, prune-min, snapshots "
                  "directory.",
    "pfs-master": "Create a master PFS: a new independent filesystem on the same volume, "
                  "with its own history, reached through the softlink PATH (inside a mount) "
                  "or as VOLUME:PFS.  NAME=VALUE sets fields as pfs-update does.",
    "pfs-slave": "Create a slave PFS that mirrors a master: shared-uuid=UUID (from the "
                 "master's pfs-status) is required.  A slave is read-only and receives its "
                 "contents with mirror-copy or mirror-stream.",
    "pfs-update": "Change fields of a PFS: label=TEXT, prune-min=DURATION (history younger "
                  "than this is never pruned), snapshots=DIR (where snapshot links go).",
    "pfs-upgrade": "Turn a slave into a master (failover): it first rolls back to its "
                   "sync-end-tid, the last state it fully received, then accepts writes.",
    "pfs-downgrade": "Turn a master into a slave, e.g. to follow the new master after a "
                     "failover; it then accepts only mirror streams.",
    "pfs-destroy": "Remove a PFS with all its records and history, and its softlink.  This "
                   "cannot be undone.",
    "mirror-read": "Write the changes of the master PFS PATH since BEGIN-TID (default: "
                   "everything) as a mirror stream to stdout, for `hammer mirror-write` on "
                   "the other side of a pipe.  " + REMOTE,
    "mirror-read-stream": "Like mirror-read -2, but never ends: after the catch-up it "
                          "follows every commit of the master (what mirror-stream runs on "
                          "a remote source).  " + REMOTE,
    "mirror-write": "Apply a mirror stream read from stdin to the slave PFS PATH.  Records "
                    "are validated; the slave's sync-end-tid moves only when a batch is "
                    "complete, so an interrupted stream leaves the slave at its last "
                    "complete state.  " + REMOTE,
    "mirror-dump": "Print a mirror stream read from stdin, a line per frame: for debugging "
                   "what mirror-read sends.",
    "mirror-copy": "Bring the slave DST up to date with the master SRC once, then exit.  "
                   "Resumable: an interrupted copy continues from the slave's sync-end-tid "
                   "the next time.  SRC and DST are mount roots or PFS softlinks, unmounted "
                   "VOLUME[:PFS]s, or remote.  " + REMOTE,
    "mirror-stream": "Like mirror-copy, then keep following every commit of SRC (DST lags by "
                     "about 2 s).  A dropped link is reconnected every --reconnect-delay "
                     "seconds; when SRC and DST are both local and both gone (unmounted) for "
                     "--give-up seconds it stops with a message.  " + REMOTE,
    "ssh-remote": "For ~/.ssh/authorized_keys on a mirror host: command=\"hammer ssh-remote "
                  "COMMAND DIR\" lets that key run only COMMAND (mirror-read also allows "
                  "mirror-read-stream) on DIR or below it, whatever the client asked for.",
    "down": "Stop what `hammer up` started: first the streams, then every mount it made "
            "(each commits and unmounts); mounts it did not make are left alone (also after "
            "`hammer up` was killed: its state file says which it made).  Each unmount is "
            "shown as it happens; a busy mount is named with the processes that hold it "
            "(as fuser -m).  Exits non-zero when a mount stays mounted or its final commit "
            "failed.",
    "service": "systemd integration of `hammer up`: install the units, run the scheduled "
               "cleanup, reload an edited config, show the running state.",
    "service install": "Write hammerfs.service (runs `hammer up`), hammerfs-cleanup.service "
                       "and hammerfs-cleanup.timer (daily `hammer service cleanup`, "
                       "Persistent=), hammerfs-scrub.service and hammerfs-scrub.timer "
                       "(monthly `hammer service scrub`, Persistent=) into DIR.  Nothing is "
                       "enabled: run systemctl daemon-reload and enable them.",
    "service scrub": "Run `hammer scrub` on the paths of the config's [scrub] section (every "
                     "mount by default), through each mount, which heals from the other end "
                     "of its [[stream]]; what hammerfs-scrub.timer runs monthly.",
    "service cleanup": "Run `hammer cleanup` on the paths of the config's [cleanup] section "
                       "(default: every writable [[mount]]): what the systemd timer runs "
                       "daily.",
    "service reload": "Make the running `hammer up` apply the edited config (SIGHUP, as "
                      "`systemctl reload hammerfs`): only what changed is restarted.",
    "service status": "Show what `hammer up` runs: each mount (mounted or not, its pid), "
                      "each stream (pid, running/stopped, restarts, last message).  Works "
                      "even when the config file is broken.",
    "luks": "Userspace LUKS1/LUKS2 containers that open with cryptsetup too (same flags as "
            "cryptsetup).",
    "luks format": "Create a LUKS container on VOLUME (destroys its contents), with one "
                   "passphrase in key slot 0.  `hammer newfs --encrypt` does this and builds "
                   "the volume inside.",
    "luks test-passphrase": "Check that a passphrase opens a key slot of VOLUME, changing "
                            "nothing.  VOLUME may be mounted (or a mount point).",
    "luks dump": "Show the LUKS header as `cryptsetup luksDump` does.  VOLUME may be "
                 "mounted (or a mount point): the header is read through the mount.",
    "luks add-key": "Add a passphrase in a new key slot; any existing passphrase unlocks the "
                    "volume key first.",
    "luks remove-key": "Remove the key slot that a passphrase opens (asks to confirm if it "
                       "is the last one).",
    "luks kill-slot": "Wipe key slot SLOT; another passphrase must still open the volume "
                      "(asks to confirm for the last slot).",
    "luks change-key": "Replace a passphrase (its key slot is rewritten with the new one).",
    "luks header-backup": "Save the whole LUKS header area (both copies and the key slots) "
                          "to a new file, mode 0400.",
    "luks header-restore": "Replace VOLUME's LUKS header with a backup made by "
                           "header-backup (asks to confirm).",
    "luks convert": "Convert the container between LUKS1 and LUKS2 in place, as "
                    "`cryptsetup convert` (take a header-backup first).",
    "luks uuid": "Show the container's UUID, or set it with --uuid.",
    "luks label": "Show the LUKS2 label and subsystem, or set them.",
}

EXAMPLES = {
    "newfs": ["hammer newfs --encrypt --key-file k1 -L master --size 2G master.img",
              "hammer newfs -f -L data /dev/disk/by-id/ata-DISK   # overwrite what is there"],
    "info": ["hammer info master.img", "hammer info /fort_knox        # a mounted volume"],
    "show": ["hammer show --key-file k1 master.img 1:0x10"],
    "scrub": ["hammer scrub /fort_knox                    # online, 2 GiB/s at most",
              "hammer scrub --from backup:/fort_knox_slave/pfs/slave /fort_knox",
              "hammer scrub --status /fort_knox", "hammer scrub --key-file k1 master.img"],
    "mirror-fetch": ["ssh backup hammer mirror-fetch /fort_knox_slave/pfs/slave   "
                     "# what scrub --from runs"],
    "mount": ["hammer mount --key-file k1 master.img /fort_knox",
              "hammer mount -o asof=0x00000001234abcd0 master.img /mnt/then"],
    "umount": ["hammer umount /fort_knox"],
    "synctid": ["hammer synctid /fort_knox"],
    "history": ["hammer history /fort_knox/etc/passwd"],
    "nohistory": ["hammer nohistory /fort_knox/scratch on", "hammer nohistory /fort_knox/tmp"],
    "history-interval": ["hammer history-interval /fort_knox 1m",
                         "hammer history-interval /fort_knox 0   # every commit again"],
    "undo": ["hammer undo -i /fort_knox/notes.txt",
             "hammer undo -r -t 0x00000001234abcd0 /fort_knox/project"],
    "snapshot": ["hammer snapshot /fort_knox /fort_knox/snaps \"before upgrade\""],
    "snapls": ["hammer snapls /fort_knox"],
    "snaprm": ["hammer snaprm /fort_knox/snaps/snap-20260101-0300"],
    "prune-everything": ["hammer prune-everything /fort_knox"],
    "prune": ["hammer prune /fort_knox"],
    "reblock": ["hammer reblock /fort_knox", "hammer reblock --time 300 /fort_knox 70"],
    "cleanup": ["hammer cleanup /fort_knox", "hammer cleanup            # every writable mount"],
    "config": ["hammer config /fort_knox", "hammer config /fort_knox new-config.txt"],
    "viconfig": ["EDITOR=nano hammer viconfig /fort_knox"],
    "pfs-status": ["hammer pfs-status /fort_knox"],
    "pfs-master": ["hammer pfs-master /fort_knox/pfs/home label=home"],
    "pfs-slave": ["hammer pfs-slave /fort_knox_slave/pfs/slave shared-uuid=UUID-FROM-PFS-STATUS"],
    "pfs-update": ["hammer pfs-update /fort_knox prune-min=1d label=master"],
    "pfs-upgrade": ["hammer pfs-upgrade /fort_knox_slave/pfs/slave"],
    "pfs-downgrade": ["hammer pfs-downgrade /fort_knox"],
    "pfs-destroy": ["hammer pfs-destroy /fort_knox/pfs/home"],
    "mirror-read": ["hammer mirror-read /fort_knox | ssh backup hammer mirror-write "
                    "/fort_knox/pfs/slave"],
    "mirror-read-stream": ["hammer mirror-read-stream /fort_knox > /dev/null   # as over ssh"],
    "mirror-write": ["ssh master hammer mirror-read /fort_knox | hammer mirror-write "
                     "/fort_knox_slave/pfs/slave"],
    "mirror-dump": ["hammer mirror-read /fort_knox | hammer mirror-dump | less"],
    "mirror-copy": ["hammer mirror-copy /fort_knox /fort_knox_slave/pfs/slave",
                    "HAMMER_RSH='ssh -i key' hammer mirror-copy -p 2222 /fort_knox "
                    "backup@offsite:/fort_knox/pfs/slave"],
    "mirror-stream": ["hammer mirror-stream /fort_knox /fort_knox_slave/pfs/slave &",
                      "hammer mirror-stream -b 10m /fort_knox backup@offsite:/fort_knox/pfs/slave"],
    "ssh-remote": ["# in ~backup/.ssh/authorized_keys on the slave host:",
                   "command=\"hammer ssh-remote mirror-write /fort_knox/pfs\" ssh-ed25519 AAAA..."],
    "up": ["hammer up --check", "hammer up"],
    "down": ["hammer down"],
    "service": ["hammer service status"],
    "service install": ["hammer service install && systemctl daemon-reload && "
                        "systemctl enable --now hammerfs.service hammerfs-cleanup.timer"],
    "service cleanup": ["hammer service cleanup"],
    "service scrub": ["hammer service scrub --config /etc/hammerfs/hammerfs.toml"],
    "service reload": ["hammer service reload"],
    "service status": ["hammer service status"],
    "demo": ["hammer demo ./hammer-demo"],
    "luks": ["hammer luks dump master.img"],
    "luks format": ["hammer luks format --key-file k1 disk.img"],
    "luks test-passphrase": ["hammer luks test-passphrase --key-file k1 master.img"],
    "luks dump": ["hammer luks dump master.img", "hammer luks dump /fort_knox   # mounted"],
    "luks add-key": ["hammer luks add-key --key-file k1 master.img k1-spare"],
    "luks remove-key": ["hammer luks remove-key master.img k1-old"],
    "luks kill-slot": ["hammer luks kill-slot --key-file k1 master.img 3"],
    "luks change-key": ["hammer luks change-key --key-file k1 master.img k1-new"],
    "luks header-backup": ["hammer luks header-backup master.img --header-backup-file "
                           "master.hdr"],
    "luks header-restore": ["hammer luks header-restore master.img --header-backup-file "
                            "master.hdr"],
    "luks convert": ["hammer luks convert --type luks1 master.img"],
    "luks uuid": ["hammer luks uuid master.img"],
    "luks label": ["hammer luks label --label backup master.img"],
}


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)),
                None)


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(name, parser) of every command and subcommand below ``parser``."""
    sub = _subparsers(parser)
    if sub is None:
        return
    for name, child in sub.choices.items():
        yield " ".join((*path, name)), child
        yield from commands(child, (*path, name))


def apply(parser: argparse.ArgumentParser) -> None:
    """Descriptions, examples and the formatter for every command."""
    for name, child in commands(parser):
        if not child.description:
            child.description = DESCRIPTIONS.get(name)
        examples = EXAMPLES.get(name)
        if examples and "example:" not in (child.epilog or ""):
            example = "example:\n" + "\n".join(f"  {line}" for line in examples)
            child.epilog = f"{child.epilog}\n\n{example}" if child.epilog else example
        if child.formatter_class is argparse.HelpFormatter:
            child.formatter_class = Formatter


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions wrapped as usual, examples kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        prose, example = text, ""
        if text.startswith("example:"):
            prose, example = "", text
        elif "\n\nexample:\n" in text:
            prose, example = text.split("\n\nexample:\n", 1)
            example = "example:\n" + example
        parts = [argparse.HelpFormatter._fill_text(self, prose, width, indent)] if prose else []
        if example:
            parts.append(super()._fill_text(example, width, indent))
        return "\n\n".join(parts)


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for a misspelt command (as git does)."""

    def _check_value(self, action: argparse.Action, value) -> None:
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            close = difflib.get_close_matches(str(value), list(action.choices), n=3,
                                              cutoff=0.6)
            if close:
                raise argparse.ArgumentError(
                    action, f"unknown command {value!r}; did you mean "
                    f"{' or '.join(repr(c) for c in close)}?")
        super()._check_value(action, value)
