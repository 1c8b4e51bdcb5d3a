"""Hard links through the mount: every name shows the new link count as soon as the
link/unlink/rename returns (libfuse's high-level API gives each name its own kernel inode)."""

from __future__ import annotations

import os
import subprocess

from fs_helpers import ForkedMount, memory_store
from hypothesis import given, settings
from hypothesis import strategies as st

from hammerfs.fuse.adapter import LinkNames

NAMES = [b"/a", b"/b", b"/c", b"/d", b"/e"]


def test_other_names_show_link_count_and_cp_keeps_links(tmp_path):
    mp = tmp_path / "m"
    mp.mkdir()
    with ForkedMount(lambda: memory_store(tmp_path), mp):
        for i in range(8):  # the lag was a race against the attribute time: try repeatedly
            d = mp / f"d{i}"
            d.mkdir()
            (d / "a").write_bytes(b"data %d" % i)
            assert os.stat(d / "a").st_nlink == 1  # cached by the kernel from here on
            os.link(d / "a", d / "b")
            assert os.stat(d / "a").st_nlink == 2
            out = tmp_path / f"out{i}"
            out.mkdir()
            # named files, no readdir (whose READDIRPLUS would refresh the attributes)
            subprocess.run(["cp", "-a", str(d / "a"), str(d / "b"), str(out)], check=True)
            assert os.stat(out / "a").st_ino == os.stat(out / "b").st_ino
            os.link(d / "b", d / "c")
            assert [os.stat(d / n).st_nlink for n in "abc"] == [3, 3, 3]
            os.unlink(d / "a")
            assert [os.stat(d / n).st_nlink for n in "bc"] == [2, 2]
            (d / "x").write_bytes(b"other")
            os.rename(d / "x", d / "c")  # replaces one name of the linked file
            assert os.stat(d / "b").st_nlink == 1
            os.stat(d / "c")
            with open(d / "b", "ab") as f:  # written through one name, seen through the other
                f.write(b"more")
            os.link(d / "b", d / "w")
            os.stat(d / "w")
            with open(d / "b", "ab") as f:
                f.write(b"again")
            assert os.stat(d / "w").st_size == os.stat(d / "b").st_size
            os.unlink(d / "w")
            os.link(d / "b", d / "y")
            os.rename(d / "y", d / "z")  # a moved name stays known
            os.unlink(d / "b")
            assert os.stat(d / "z").st_nlink == 1


@st.composite
def ops(draw):
    return draw(st.lists(st.tuples(st.sampled_from(["link", "unlink", "rename"]),
                                   st.sampled_from(NAMES), st.sampled_from(NAMES)),
                         max_size=40))


@settings(max_examples=300, deadline=None)
@given(ops())
def test_link_names_returns_exactly_the_other_names_whose_count_changed(steps):
    """Against a flat namespace model: each op returns the other current names of the file
    whose link count changed (every name of a multi-linked file was made by link)."""
    files = {b"/a": 1, b"/b": 2}  # name -> file
    table = LinkNames()

    def others(file, but):
        return sorted(n for n, f in files.items() if f == file and n != but)

    for op, x, y in steps:
        if op == "link" and x in files and y not in files:
            files[y] = files[x]
            got, want = table.linked((0, files[x]), x, y), others(files[x], y)
        elif op == "unlink" and x in files:
            file = files.pop(x)
            got, want = table.removed(x), others(file, x)
        elif op == "rename" and x in files:
            if files.get(y) == files[x]:
                got, want = table.renamed(x, y), []
            else:
                replaced = files.pop(y, None)
                files[y] = files.pop(x)
                want = [] if replaced is None else others(replaced, y)
                got = table.renamed(x, y)
        else:
            continue
        assert got == want, (op, x, y)
