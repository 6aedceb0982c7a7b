"""prunedroid.measure.callgrind's reading of callgrind's dumps (the counting itself needs valgrind and minutes)."""
from prunedroid.measure.callgrind import read_dumps

DUMP = """# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 4242
cmd:  python benchmarks/instructions.py --worker ...
part: {part}

desc: I1 cache:
desc: Timerange: Basic block 1000 - 2000
desc: Trigger: Client Request: {name}

positions: line
events: Ir
summary: {total}

fl=(1) ???
fn=(1) 0x0000000000001000
0 {total}

totals: {total}
"""


def test_each_named_dump_gives_its_count_in_the_order_made(tmp_path):
    for part, name, total in [(2, "base/executorch", 9450000), (10, "pruned/pytorch", 8260000),
                              (1, "base/pytorch", 12900000)]:
        (tmp_path / f"callgrind.out.{part}").write_text(DUMP.format(part=part, name=name, total=total))
    (tmp_path / "callgrind.out.3").write_text("# callgrind format\npart: 3\ndesc: Trigger: Program termination\n"
                                              "totals: 5\n")  # not a client request: no model's count
    assert list(read_dumps(tmp_path).items()) == [("base/pytorch", 12900000), ("base/executorch", 9450000),
                                                  ("pruned/pytorch", 8260000)]
