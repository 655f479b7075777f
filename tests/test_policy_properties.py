"""Properties of flexai.policy over random pools and requests (hypothesis): no placement ever
exceeds a GPU's memory or 100% compute, a request that fits is never queued, preemption never
touches an equal or higher priority, gangs are all or nothing, and the incremental state (and
FGD's cache) always equals a fresh computation. Every policy is checked.

Pure Python and numpy; small examples (the whole file runs in seconds)."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexai.policy import (
    EVICTABLE,
    POLICIES,
    PRIORITIES,
    Evict,
    GpuView,
    NodeView,
    Place,
    PoolState,
    PoolView,
    Preempt,
    Request,
    Shrink,
    SliceView,
    Wait,
    Workload,
    apply_decision,
    decide,
    priority_rank,
)
from flexai.policy.fgd import _Frag

NAMES = sorted(POLICIES)
MODELS = ("A", "B")
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def gpus(draw, index):
    total = draw(st.sampled_from([8, 16]))
    slices, mem_left, comp_left = [], total, 100
    for j in range(draw(st.integers(0, 3))):
        mem = draw(st.integers(0, mem_left))
        comp = draw(st.integers(0, comp_left))
        slices.append(SliceView(f"j{index}-{j}-{draw(st.integers(0, 2))}",
                                draw(st.sampled_from(PRIORITIES)), mem, comp,
                                draw(st.integers(0, comp))))
        mem_left -= mem
        comp_left -= comp
    # sometimes something not listed holds part of the GPU too
    hidden_m = draw(st.integers(0, mem_left)) if draw(st.booleans()) else 0
    hidden_c = draw(st.integers(0, comp_left)) if draw(st.booleans()) else 0
    return GpuView(index, draw(st.sampled_from(MODELS)), total, mem_left - hidden_m,
                   comp_left - hidden_c, tuple(slices))


@st.composite
def views(draw):
    nodes = []
    for i in range(draw(st.integers(1, 4))):
        k = draw(st.integers(0, 4))
        nodes.append(NodeView(f"n{i}", tuple(draw(gpus(i * 10 + g)) for g in range(k)),
                              draw(st.sampled_from([0, 2000, 8000])),
                              draw(st.sampled_from([0, 64]))))
    # a job's slices share one priority (as in the pool)
    prio: dict[str, str] = {}
    fixed = []
    for n in nodes:
        gs = []
        for g in n.gpus:
            ss = tuple(SliceView(s.job, prio.setdefault(s.job, s.priority), s.memory, s.compute,
                                 s.guarantee) for s in g.slices)
            gs.append(GpuView(g.index, g.model, g.memory_total, g.memory_free, g.compute_free,
                              ss))
        fixed.append(NodeView(n.name, tuple(gs), n.cpu_milli_free, n.host_memory_free))
    return PoolView(tuple(fixed))


@st.composite
def requests(draw, names=("n0", "n1", "n2", "n3")):
    k = draw(st.sampled_from([0, 1, 1, 1, 2, 3]))
    compute = 0 if k == 0 else 100 if k > 1 else draw(st.integers(1, 100))
    memory = 0 if k == 0 else draw(st.integers(0, 16))
    models = draw(st.sampled_from([None, None, frozenset({"A"}), frozenset({"A", "B"})]))
    origin = draw(st.sampled_from((None,) + tuple(names)))
    where = draw(st.sampled_from(["prefer-local", "anywhere"] +
                                 (["local-only"] if origin else [])))
    return Request(memory, compute, k, draw(st.sampled_from(PRIORITIES)), models, origin, where,
                   draw(st.sampled_from([0, 0, 1000, 4000])), draw(st.sampled_from([0, 0, 32])))


def _fits_node(r: Request, n: NodeView) -> bool:
    if r.cpu_milli > n.cpu_milli_free or r.host_memory > n.host_memory_free:
        return False
    ok = [g for g in n.gpus if r.models is None or g.model in r.models]
    if r.gpus == 0:
        return True
    if r.gpus == 1:
        return any(g.compute_free >= r.compute and g.memory_free >= r.memory for g in ok)
    whole = [g for g in ok if g.compute_free == 100 and g.memory_free == g.memory_total
             and g.memory_total >= r.memory]
    return len(whole) >= r.gpus


def _fits(r: Request, view: PoolView) -> bool:
    names = {n.name for n in view.nodes}
    if r.where == "local-only":
        return r.origin in names and _fits_node(r, view.node(r.origin))
    return any(_fits_node(r, n) for n in view.nodes)


def _check_preempt(r: Request, view: PoolView, d: Preempt) -> None:
    for a in d.actions:
        node = view.node(a.node)
        held = [s for g in node.gpus for s in g.slices if s.job == a.job]
        assert held, f"{a} names a job that is not there"
        for s in held:
            assert priority_rank(s.priority) > r.rank, f"{a} touches {s.priority} for {r}"
        if isinstance(a, Evict):
            assert all(s.priority in EVICTABLE for s in held), f"{a} evicts {held}"
        else:
            assert isinstance(a, Shrink)
            (s,) = [s for s in node.gpu(a.gpu).slices if s.job == a.job][:1]
            assert s.guarantee <= a.compute < s.compute


@SETTINGS
@given(view=views(), r=requests(), name=st.sampled_from(NAMES))
def test_decisions_fit_and_respect_priorities(view, r, name):
    d = decide(r, view, name)
    if _fits(r, view):
        assert isinstance(d, Place), f"{name}: {r} fits but got {d}"
    else:
        assert not isinstance(d, Place), f"{name}: {r} does not fit but got {d}"
    if isinstance(d, Wait):
        return
    if isinstance(d, Preempt):
        _check_preempt(r, view, d)
    place = d.then if isinstance(d, Preempt) else d
    node = view.node(place.node)
    assert len(set(place.gpus)) == r.gpus  # a gang is whole or nothing; one node by type
    assert place.remote == (r.origin is not None and place.node != r.origin)
    if r.where == "local-only":
        assert place.node == r.origin
    if (isinstance(d, Place) and r.where == "prefer-local"
            and r.origin in {n.name for n in view.nodes}
            and _fits_node(r, view.node(r.origin))):
        assert place.node == r.origin, f"{name}: fits locally on {r.origin}, went {place}"
    if r.models is not None:
        assert all(node.gpu(i).model in r.models for i in place.gpus)
    after = apply_decision(view, r, d, job="new")  # raises if anything is overcommitted
    for n in after.nodes:
        assert n.cpu_milli_free >= 0 and n.host_memory_free >= 0
        for g in n.gpus:
            assert 0 <= g.memory_free <= g.memory_total and 0 <= g.compute_free <= 100
            assert sum(s.memory for s in g.slices) <= g.memory_total
            assert sum(s.compute for s in g.slices) <= 100


FGD_LIKE = ("fgd", "fgd-exact", "flexai")


@st.composite
def pools(draw):
    n = draw(st.integers(1, 6))
    return PoolState.empty([f"n{i}" for i in range(n)],
                           [draw(st.sampled_from([0, 1, 2, 4, 8])) for _ in range(n)],
                           [draw(st.sampled_from(MODELS)) for _ in range(n)],
                           [draw(st.sampled_from([8, 16])) for _ in range(n)],
                           cpu_milli=[draw(st.sampled_from([4000, 16000])) for _ in range(n)])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=pools(), rs=st.lists(requests(names=("n0", "n1")), min_size=1, max_size=25),
       name=st.sampled_from(NAMES), data=st.data())
def test_the_incremental_state_never_overcommits_and_releases_exactly(state, rs, name, data):
    init = (state.cfree.copy(), state.mfree.copy(), state.cpu.copy(), state.first.copy())
    policy = POLICIES[name](workload=Workload(rs)) if name in FGD_LIKE \
        else POLICIES[name]()
    allocs = []
    for r in rs * 2:
        d = policy.choose(r, state)
        if isinstance(d, Wait):
            if r.where != "local-only":
                assert not len(state.candidates(r))
            elif r.origin in state.node_index:
                assert not len(state.candidates(r, only=state.node_index[r.origin]))
            continue
        if r.gpus > 1:  # whole, free GPUs on one node
            n = state.node_index[d.node]
            cols = [int(np.flatnonzero(state.gpu_index[n] == i)[0]) for i in d.gpus]
            assert all(state.full()[n, c] for c in cols)
        allocs.append(state.place(r, d))
        assert (state.cfree >= 0).all() and (state.cfree <= 100).all()
        assert (state.mfree >= 0).all() and (state.mfree <= state.mtot).all()
        assert (state.cpu >= 0).all()
        if name in FGD_LIKE:
            _same_as_fresh(policy, state)
    for a in data.draw(st.permutations(allocs)):
        state.release(a)
        if name in FGD_LIKE:
            _same_as_fresh(policy, state)
    for before, now in zip(init, (state.cfree, state.mfree, state.cpu, state.first)):
        assert np.array_equal(before, now)


def _same_as_fresh(policy, state):
    """The policy's cached per-node terms (kept up to date node by node) equal a fresh
    computation on the state as it is: fragmentation, and which task types each node hosts."""
    cached = policy.frag(state)
    fresh = _Frag(state, policy.workload, track_hosts=cached.track_hosts)
    fresh.refresh(state)
    assert np.allclose(cached.frag, fresh.frag)
    assert np.array_equal(cached.hosts, fresh.hosts)
    assert np.array_equal(cached.nhosts, fresh.hosts.sum(axis=0))


@SETTINGS
@given(view=views(), r=requests())
def test_preemption_plans_only_take_from_strictly_lower_priorities(view, r):
    from flexai.policy import plan_preemption
    plan = plan_preemption(r, view)
    if plan is None:
        return
    _check_preempt(r, view, plan)
    apply_decision(view, r, plan, job="new")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=pools(), rs=st.lists(requests(names=("n0", "n1")), min_size=1, max_size=20),
       name=st.sampled_from([n for n in NAMES if n != "random-fit"]))
def test_skipping_alike_nodes_and_gpus_changes_no_choice(state, rs, name):
    """Scans keep one of each class of alike nodes and GPUs: the choice must be the one a scan
    of every place would make (the lowest score, earliest on ties)."""
    policy = POLICIES[name](workload=Workload(rs)) if name in FGD_LIKE \
        else POLICIES[name]()
    for r in rs * 2:
        d = policy.choose(r, state)
        if isinstance(d, Wait) or r.origin is not None:
            if isinstance(d, Place):
                state.place(r, d)
            continue
        full = state.candidates(r)
        best = policy.pick(r, state, full, None)
        assert d == state.to_place(r, int(full.node[best]), int(full.col[best]))
        state.place(r, d)

