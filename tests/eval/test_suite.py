"""The RULER-style suite runner: grid, up-front checks, one program per cell, rows, Pareto."""

import pytest
from flax import nnx

from lcache.data import ByteTokenizer, ruler
from lcache.eval import Engine, ProgramCache, suite
from lcache.eval.suite_plots import heatmaps, pareto, pareto_front
from lcache.model import ModelConfig, Transformer
from lcache.sampling import Sampling

TOK = ByteTokenizer()
HAY = TOK.encode("".join(f"x{i} = {i} * 3  # line\n" for i in range(2000)))
CFG = ModelConfig(dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=64)


def test_grid_and_budgets():
    cells = suite.grid(["dense", "streaming_llm(sinks=4)", "dense@int4"], (0.1, 0.5), (600, 800))
    assert [(c.spec, c.budget_frac) for c in cells if c.context == 600] == [
        ("dense", 1.0), ("streaming_llm(sinks=4)", 0.1), ("streaming_llm(sinks=4)", 0.5),
        ("dense@int4", 1.0)]
    assert suite.Cell("window", 0.05, 1024).budget == 51


@pytest.mark.parametrize("args, match", [
    ((["window"], (0.0,), (600,)), "budget fractions must lie in"),
    ((["window"], (), (600,)), "must be non-empty"),
])
def test_bad_grid(args, match):
    with pytest.raises(ValueError, match=match):
        suite.grid(*args)


def test_cells_checked_before_work():
    with pytest.raises(ValueError, match="cell snapkv.* at 0.05 of context 600 .30 tokens."):
        suite.check_cells(suite.grid(["snapkv(window=32)"], (0.05,), (600,)), CFG, 36)
    with pytest.raises(ValueError, match="unknown policy 'snap'"):
        suite.check_cells(suite.grid(["snap"], (0.5,), (600,)), CFG, 36)


def test_one_program_per_cell_and_rows():
    model = Transformer(CFG, nnx.Rngs(0))
    engine = Engine.create(model, ProgramCache())
    examples = ruler.make_suite(TOK, HAY, ("passkey", "multikey", "cwe"), (600,), (0.0, 1.0), 3, 0)
    cells = suite.grid(["dense", "streaming_llm(sinks=4)", "snapkv(window=16,kernel=7)"],
                       (0.3, 0.5), (600,))
    seen = []
    rows = suite.run_suite(engine, TOK, examples, cells, batch=4, threads=2,
                           on_cell=lambda cell, r: seen.append(cell))
    assert seen == cells
    # tasks and depths share each cell's program; snapkv's two budgets share one (as data)
    assert engine.programs.compiles == len(cells) - 1
    assert len(rows) == len(cells) * (2 * 2 + 1)  # (passkey, multikey) x 2 depths + cwe
    assert all(r["trials"] == 3 and 0 <= r["accuracy"] <= 1 for r in rows)
    bytes_of = {(r["policy"], r["budget_frac"]): r["cache_bytes"] for r in rows}
    assert bytes_of["streaming_llm(sinks=4)", 0.3] < bytes_of["dense", 1.0]
    snap = "snapkv(window=16,kernel=7)"
    assert bytes_of[snap, 0.3] < bytes_of[snap, 0.5]  # each cell's own memory, not the shared


def test_budget_as_data_matches_own_policy():
    """A cell run on the shared program (largest budget, rows blocked down) gives the same
    generations as its own policy."""
    model = Transformer(CFG, nnx.Rngs(3))
    examples = ruler.make_suite(TOK, HAY, ("multikey",), (600,), (0.5,), 4, 1)
    spec = "snapkv(window=16,kernel=7)"
    cells = suite.grid([spec], (0.2, 0.5), (600,))
    own = {c: suite.cell_policy(Engine.create(model), c, [], 9, 4) for c in cells}
    shared = suite.share_budgets(own)
    assert set(shared) == set(cells) and len(set(shared.values())) == 1
    assert suite.share_budgets({c: own[c] for c in cells[:1]}) == {}
    engine = Engine.create(model, ProgramCache())
    prompts = [e.prompt_ids for e in examples]
    small = cells[0]
    a = engine.generate(prompts, own[small], Sampling(max_new_tokens=9), pad_to=600, batch=4)
    b = engine.generate(prompts, shared[small], Sampling(max_new_tokens=9), pad_to=600,
                        batch=4, budgets=[small.budget] * 4)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    h2o = {c: suite.cell_policy(engine, c, [], 9, 4)
           for c in suite.grid(["h2o(recent=0.5)"], (0.2, 0.5), (600,))}
    assert suite.share_budgets(h2o) == {}  # its recent window scales with the budget


def test_pareto_front_and_plots(tmp_path):
    assert list(pareto_front([1, 2, 3, 2.5], [0.1, 0.5, 0.4, 0.45])) == [0, 1]
    rows = [dict(policy=p, budget_frac=f, task=t, context=600, depth=d, trials=2,
                 accuracy=float(a), cache_bytes=b)
            for (p, f, b) in [("dense", 1.0, 1000), ("window", 0.2, 200)]
            for t in ("passkey", "cwe") for d, a in [(0.0, 0.5), (1.0, 1.0)]]
    heatmaps(rows, 0.2, str(tmp_path / "h.png"))
    pareto(rows, 600, str(tmp_path / "p.png"))
    assert (tmp_path / "h.png").stat().st_size > 0 and (tmp_path / "p.png").stat().st_size > 0
