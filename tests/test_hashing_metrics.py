"""Hashing metrics: hand-worked Hamming rankings, plain loops, DPSH's reference code, bad input."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepmetric.evaluation.hashing import hashing_scores

# Database of 6 codes (4 bits, as {-1, +1}) with flat labels, used by the hand-worked tests.
DB = torch.tensor([[1, 1, -1, -1],    # db0 1100, label 1
                   [1, 1, 1, -1],     # db1 1110, label 0
                   [-1, -1, -1, -1],  # db2 0000, label 0
                   [1, 1, 1, 1],      # db3 1111, label 1
                   [1, 1, 1, -1],     # db4 1110, label 0
                   [-1, 1, 1, 1]])    # db5 0111, label 1
DB_Y = torch.tensor([1, 0, 0, 1, 0, 1])
Q = torch.tensor([[1, 1, 1, 1],       # q0 1111, label 0
                  [-1, -1, -1, -1],   # q1 0000, label 1
                  [1, -1, 1, -1]])    # q2 1010, label 1
Q_Y = torch.tensor([0, 1, 1])


# ------------------------------------------------------------------ plain references

def loop_scores(qc, ql, dc, dl, top_k, ns, radius, q_real=None, d_real=None):
    """Query by query, item by item; relevance = shared label (flat ints or multi-label rows)."""
    qb, db = (np.asarray(qc) > 0).tolist(), (np.asarray(dc) > 0).tolist()
    ql, dl = np.asarray(ql).tolist(), np.asarray(dl).tolist()
    sums, kept = {}, 0
    for i in range(len(qb)):
        ham = [sum(a != b for a, b in zip(qb[i], d)) for d in db]
        rel = [(any(a and b for a, b in zip(ql[i], l)) if isinstance(l, list) else ql[i] == l) for l in dl]
        big_r = sum(rel)
        if big_r == 0:
            continue
        kept += 1
        if q_real is None:
            order = sorted(range(len(db)), key=lambda j: (ham[j], j))
        else:
            order = sorted(range(len(db)), key=lambda j: (ham[j], math.dist(q_real[i], d_real[j]), j))
        ranked = [rel[j] for j in order]
        scores, found, ap, ap_k = {}, 0, 0.0, 0.0
        for pos, r in enumerate(ranked, start=1):
            if r:
                found += 1
                ap += found / pos
                if top_k is not None and pos <= top_k:
                    ap_k += found / pos
        scores["map"] = ap / big_r
        if top_k is not None:
            found_k = sum(ranked[:top_k])
            scores[f"map_at_{top_k}"] = ap_k / found_k if found_k else 0.0
        for n in ns:
            scores[f"precision_at_{n}"] = sum(ranked[:n]) / n
        within = [j for j in range(len(db)) if ham[j] <= radius]
        hits = sum(rel[j] for j in within)
        scores[f"precision_within_radius_{radius}"] = hits / len(within) if within else 0.0
        scores[f"recall_within_radius_{radius}"] = hits / big_r
        for key, value in scores.items():
            sums[key] = sums.get(key, 0.0) + value
    out = {key: value / kept for key, value in sums.items()}
    out.update(num_queries=len(qb), queries_without_relevant=len(qb) - kept)
    return out


def dpsh_calc_map(qB, rB, queryL, retrievalL):
    """DPSH's ``CalcMap`` (utils/calc_hr.py), argsort made stable so that ties keep database order."""
    num_query = queryL.shape[0]
    map_ = 0
    for it in range(num_query):
        gnd = (np.dot(queryL[it, :], retrievalL.transpose()) > 0).astype(np.float32)
        tsum = np.sum(gnd)
        if tsum == 0:
            continue
        hamm = 0.5 * (qB.shape[1] - np.dot(qB[it, :], rB.transpose()))
        ind = np.argsort(hamm, kind="stable")
        gnd = gnd[ind]
        count = np.linspace(1, tsum, int(tsum))
        tindex = np.asarray(np.where(gnd == 1)) + 1.0
        map_ = map_ + np.mean(count / tindex)
    return map_ / num_query


def dpsh_calc_topmap(qB, rB, queryL, retrievalL, topk):
    """DPSH's ``CalcTopMap``, argsort made stable."""
    num_query = queryL.shape[0]
    topkmap = 0
    for it in range(num_query):
        gnd = (np.dot(queryL[it, :], retrievalL.transpose()) > 0).astype(np.float32)
        hamm = 0.5 * (qB.shape[1] - np.dot(qB[it, :], rB.transpose()))
        ind = np.argsort(hamm, kind="stable")
        tgnd = gnd[ind][0:topk]
        tsum = np.sum(tgnd)
        if tsum == 0:
            continue
        count = np.linspace(1, tsum, int(tsum))
        tindex = np.asarray(np.where(tgnd == 1)) + 1.0
        topkmap = topkmap + np.mean(count / tindex)
    return topkmap / num_query


# ------------------------------------------------------------------ hand-worked

def test_hand_worked_flat_labels():
    # q0 (1111, label 0): Hamming to db0..db5 = 2, 1, 4, 0, 1, 1; ranking (ties in database order)
    #   db3 F, db1 T, db4 T, db5 F, db0 F, db2 T; R = 3
    #   AP = (1/2 + 2/3 + 3/6) / 3 = 5/9; AP@3 = (1/2 + 2/3) / 2 found = 7/12
    #   P@1 0, P@2 1/2, P@5 2/5; radius 1 holds db1, db3, db4, db5 (2 relevant): precision 1/2, recall 2/3
    # q1 (0000, label 1): Hamming 2, 3, 0, 4, 3, 3; ranking db2 F, db0 T, db1 F, db4 F, db5 T, db3 T
    #   AP = (1/2 + 2/5 + 3/6) / 3 = 7/15; AP@3 = (1/2) / 1 found = 1/2
    #   P@1 0, P@2 1/2, P@5 2/5; radius 1 holds db2 only (not relevant): precision 0, recall 0
    # means: mAP (5/9 + 7/15) / 2 = 23/45, mAP@3 (7/12 + 1/2) / 2 = 13/24, P@2 1/2, P@5 2/5,
    #        precision within 1 (1/2 + 0) / 2 = 1/4, recall within 1 (2/3 + 0) / 2 = 1/3
    # P@100 on a database of 6: both queries rank all 3 relevant items, 3/100 (the missing ranks not relevant)
    scores = hashing_scores(Q[:2], Q_Y[:2], DB, DB_Y, top_k=3, precision_ns=(1, 2, 5, 100), radius=1)
    assert scores == pytest.approx({
        "map": 23 / 45, "map_at_3": 13 / 24, "precision_at_1": 0.0, "precision_at_2": 0.5, "precision_at_5": 0.4,
        "precision_at_100": 0.03,
        "precision_within_radius_1": 0.25, "recall_within_radius_1": 1 / 3,
        "num_queries": 2, "queries_without_relevant": 0})


def test_map_at_k_scores_zero_when_nothing_found_and_empty_radius_scores_zero():
    # q1: top 2 = db2 F, db0 T -> AP@2 = (1/2) / 1 = 1/2
    # q2 (1010, label 1): Hamming 2, 1, 2, 2, 1, 3; top 2 = db1 F, db4 F -> nothing found -> 0 (kept in the mean)
    # mAP@2 = (1/2 + 0) / 2 = 1/4. Radius 0: q1 holds db2 (F) -> precision 0; q2 holds nothing -> 0.
    # Recall within 0 is 0 for both.
    scores = hashing_scores(Q[1:], Q_Y[1:], DB, DB_Y, top_k=2, precision_ns=(), radius=0)
    assert scores["map_at_2"] == pytest.approx(0.25)
    assert scores["precision_within_radius_0"] == 0.0
    assert scores["recall_within_radius_0"] == 0.0
    # q2 alone: radius 1 holds db1, db4 (both label 0): non-empty, precision 0; radius 2 adds db0, db2, db3:
    # relevant db0, db3 -> precision 2/5, recall 2/3 (R = 3: db0, db3, db5)
    scores = hashing_scores(Q[2:], Q_Y[2:], DB, DB_Y, precision_ns=(), radius=2)
    assert scores["precision_within_radius_2"] == pytest.approx(2 / 5)
    assert scores["recall_within_radius_2"] == pytest.approx(2 / 3)


def test_top_k_beyond_the_database_equals_full_map():
    # K >= N: every relevant item is found in the top K, so AP@K = AP
    scores = hashing_scores(Q, Q_Y, DB, DB_Y, top_k=100, precision_ns=())
    assert scores["map_at_100"] == pytest.approx(scores["map"])


def test_real_valued_codes_rerank_inside_equal_hamming_distance():
    # codes are the signs of the real values; q0 real (1, 1, 1, 1).
    # The Hamming-1 group db1, db4, db5 is re-ranked by euclidean distance to q0:
    # db5 |(1.1, 0, 0, 0)| = 1.1, db1 1.5, db4 1.9 -> db5 F, db1 T, db4 T.
    # db3 (Hamming 0) stays first although its real code is far (distance 8).
    # ranking db3 F, db5 F, db1 T, db4 T, db0 F, db2 T: AP = (1/3 + 2/4 + 3/6) / 3 = 4/9;
    # AP@3 = (1/3) / 1 = 1/3. Without re-ranking: AP 5/9, AP@3 7/12 (first hand-worked test).
    db_real = torch.tensor([[1, 1, -1, -1], [1, 1, 1, -0.5], [-1, -1, -1, -1], [5, 5, 5, 5],
                            [1, 1, 1, -0.9], [-0.1, 1, 1, 1]], dtype=torch.float64)
    q_real = torch.ones(1, 4, dtype=torch.float64)
    scores = hashing_scores(q_real, Q_Y[:1], db_real, DB_Y, top_k=3, precision_ns=(),
                            query_real=q_real, db_real=db_real)
    assert scores["map"] == pytest.approx(4 / 9)
    assert scores["map_at_3"] == pytest.approx(1 / 3)
    plain = hashing_scores(q_real, Q_Y[:1], db_real, DB_Y, top_k=3, precision_ns=())
    assert plain["map"] == pytest.approx(5 / 9) and plain["map_at_3"] == pytest.approx(7 / 12)


def test_rerank_orders_near_duplicate_float32_real_codes():
    # q (1000, 1000); db0 is 0.01 away (not relevant), db1 0.002 away (relevant), both Hamming 0.
    # In float32 |x|^2 + |y|^2 - 2 x.y cancels (ulp of 2e6 is 0.125) and both read 0: db0 first, AP 1/2.
    # Ranked by their real distances db1 comes first: AP 1.
    q_real = torch.tensor([[1000.0, 1000.0]])
    db_real = q_real + torch.tensor([[0.01, 0.0], [0.002, 0.0]])
    scores = hashing_scores(q_real, torch.tensor([1]), db_real, torch.tensor([0, 1]), precision_ns=(1,),
                            radius=None, query_real=q_real, db_real=db_real)
    assert scores["map"] == 1.0 and scores["precision_at_1"] == 1.0
    # numpy real codes, as codes and labels may be
    assert hashing_scores(q_real, np.array([1]), db_real, np.array([0, 1]), precision_ns=(1,), radius=None,
                          query_real=q_real.numpy(), db_real=db_real.numpy())["map"] == 1.0


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_rerank_orders_real_codes_closer_than_1e6(offset):
    # db0 is 8e-7 from q (not relevant), db1 1e-7 (relevant), both Hamming 0. euclidean reads every
    # distance below 1e-6 as 0, which tied them (db0 first, AP 1/2); far from the origin (offset) the
    # float64 |x|^2 + |y|^2 - 2 x.y cancels them too unless moved to the centre. Expected: AP 1.
    q_real = torch.full((1, 4), 0.5 + offset, dtype=torch.float64)
    db_real = q_real.repeat(2, 1)
    db_real[0, 0] += 8e-7
    db_real[1, 0] += 1e-7
    scores = hashing_scores(torch.ones(1, 4), torch.tensor([0]), torch.ones(2, 4), torch.tensor([1, 0]),
                            precision_ns=(1,), radius=None, query_real=q_real, db_real=db_real)
    assert scores["map"] == 1.0 and scores["precision_at_1"] == 1.0



@pytest.mark.parametrize("chunk_size", [None, 1, 300])
def test_rerank_keeps_identical_real_codes_in_database_order(chunk_size):
    # database rows alternate v (even) and 1.5 v (odd): one sign code, so every Hamming distance ties,
    # and the real distances put v's 1,024 copies first (the queries are within about 2.3 of v, 6 of
    # 1.5 v). The copies of v in the first half (rows 0, 2, ..., 1022) are relevant: ranked by index,
    # they are the first 512, so AP = 1 and P@512 = 1. A float64 matrix product rounded the copies
    # differently at its tiles' edges (2 values among them in a row), so some copies from the second
    # half came first: map 0.985 at chunk_size None and 300, 1 at chunk_size 1
    v = torch.randn(1, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    db_real = torch.cat([v, 1.5 * v]).repeat(1024, 1)
    db_y = ((torch.arange(2048) % 2 == 1) | (torch.arange(2048) >= 1024)).long()
    noise = torch.randn(1024, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q_real = v + 0.2 * noise
    scores = hashing_scores(q_real, torch.zeros(1024, dtype=torch.long), db_real, db_y, precision_ns=(1, 512),
                            radius=None, query_real=q_real, db_real=db_real, chunk_size=chunk_size)
    assert scores["map"] == 1.0 and scores["precision_at_1"] == 1.0 and scores["precision_at_512"] == 1.0

def test_hand_worked_multilabel_and_queries_without_relevant():
    # q0 labels {0, 2}, code 11; db: 11 {2} (Hamming 0, T), 10 {1} (1, F), 00 {0, 1} (2, T)
    # AP = (1/1 + 2/3) / 2 = 5/6. q1 has no label: nothing is relevant -> excluded and counted
    q = np.array([[1, 1], [1, 1]])
    ql = np.array([[True, False, True], [False, False, False]])
    db = np.array([[1, 1], [1, 0], [0, 0]])
    dl = np.array([[False, False, True], [False, True, False], [True, True, False]])
    scores = hashing_scores(q, ql, db, dl, precision_ns=(1,), radius=1)
    # P@1 = 1; radius 1 holds db0 (T), db1 (F): precision 1/2, recall 1/2
    assert scores == pytest.approx({"map": 5 / 6, "precision_at_1": 1.0, "precision_within_radius_1": 0.5,
                                    "recall_within_radius_1": 0.5, "num_queries": 2, "queries_without_relevant": 1})
    # radii beyond the code length (and beyond a byte) hold every item: 2 relevant of 3, both found
    for radius in (2, 256, 300, 70000):
        wide = hashing_scores(q, ql, db, dl, precision_ns=(), radius=radius)
        assert wide[f"precision_within_radius_{radius}"] == pytest.approx(2 / 3)
        assert wide[f"recall_within_radius_{radius}"] == 1.0


def test_hand_worked_hierarchical_labels_every_level():
    # (coarse, fine) labels. db: 11 (0, 1), 10 (0, 0), 00 (1, 0)
    # q0 = 11 (0, 0): Hamming 0, 1, 2. finest [F, T, F]: AP = P(2) = 1/2, P@1 = 0, radius 1 holds db0, db1
    #   (precision 1/2, recall 1/1); level 0 [T, T, F]: AP = 1, P@1 = 1, radius 1: 2/2, recall 2/2
    # q1 = 11 (2, 5): nothing relevant at any level -> excluded and counted
    # q2 = 00 (1, 7): Hamming 2, 1, 0. finest: nothing relevant; level 0 [T, F, F] (db2 first): AP = 1,
    #   P@1 = 1, radius 1 holds db2, db1: precision 1/2, recall 1
    q = np.array([[1, 1], [1, 1], [0, 0]])
    ql = np.array([[0, 0], [2, 5], [1, 7]])
    db = np.array([[1, 1], [1, 0], [0, 0]])
    dl = np.array([[0, 1], [0, 0], [1, 0]])
    scores = hashing_scores(q, ql, db, dl, precision_ns=(1,), radius=1)
    finest = {"map": 1 / 2, "precision_at_1": 0.0, "precision_within_radius_1": 0.5,
              "recall_within_radius_1": 1.0, "num_queries": 3, "queries_without_relevant": 2}
    assert scores["level_0"] == pytest.approx({"map": 1.0, "precision_at_1": 1.0, "precision_within_radius_1": 0.75,
                                               "recall_within_radius_1": 1.0, "num_queries": 3,
                                               "queries_without_relevant": 1})
    assert scores["level_1"] == pytest.approx(finest)
    assert {key: scores[key] for key in finest} == pytest.approx(finest)
    assert set(scores) == set(finest) | {"level_0", "level_1"}
    # a finest level without any relevant item: only the counts there
    only_coarse = hashing_scores(q[2:], ql[2:], db, dl, precision_ns=(1,), radius=1)
    assert {key: only_coarse[key] for key in ("num_queries", "queries_without_relevant")} == {
        "num_queries": 1, "queries_without_relevant": 1}
    assert "map" not in only_coarse and only_coarse["level_0"]["map"] == 1.0


# ------------------------------------------------------------------ against loops and DPSH

@settings(max_examples=30, deadline=None)
@given(nq=st.integers(1, 8), ndb=st.integers(1, 30), bits=st.integers(1, 12), n_classes=st.integers(1, 4),
       top_k=st.integers(1, 35), radius=st.integers(0, 4), seed=st.integers(0, 2**16), rerank=st.booleans(),
       multilabel=st.booleans())
def test_equals_loop(nq, ndb, bits, n_classes, top_k, radius, seed, rerank, multilabel):
    gen = torch.Generator().manual_seed(seed)
    q_real = torch.randn(nq, bits, generator=gen, dtype=torch.float64)
    d_real = torch.randn(ndb, bits, generator=gen, dtype=torch.float64)
    if multilabel:
        ql = torch.rand(nq, n_classes, generator=gen) < 0.4
        dl = torch.rand(ndb, n_classes, generator=gen) < 0.4
    else:
        ql = torch.randint(0, n_classes, (nq,), generator=gen)
        dl = torch.randint(0, n_classes, (ndb,), generator=gen)
    if multilabel:  # make sure at least query 0 has a relevant item
        ql[0, 0] = dl[0, 0] = True
    else:
        ql[0] = dl[0]
    real = {"query_real": q_real, "db_real": d_real} if rerank else {}
    expected = loop_scores(q_real.sign(), ql, d_real.sign(), dl, top_k, (1, 3, 10), radius,
                           q_real.tolist() if rerank else None, d_real.tolist() if rerank else None)
    for chunk_size in (None, 1, 3):
        scores = hashing_scores(q_real.sign().long(), ql, d_real, dl, top_k=top_k, precision_ns=(1, 3, 10),
                                radius=radius, chunk_size=chunk_size, **real)
        assert scores == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_equals_dpsh_calc_map_and_topmap(seed):
    # DPSH's reference code on +-1 codes and one-hot labels; every query has a relevant item, so the
    # mean over all queries (DPSH) and over queries with a relevant item (ours) coincide
    rng = np.random.default_rng(seed)
    qB = np.where(rng.random((20, 12)) < 0.5, -1.0, 1.0)
    rB = np.where(rng.random((200, 12)) < 0.5, -1.0, 1.0)
    ql, rl = rng.integers(0, 5, 20), rng.integers(0, 5, 200)
    rl[:5] = np.arange(5)
    one_hot = np.eye(5)
    scores = hashing_scores(qB, ql, rB, rl, top_k=50, precision_ns=())
    assert scores["map"] == pytest.approx(dpsh_calc_map(qB, rB, one_hot[ql], one_hot[rl]), abs=1e-6)
    assert scores["map_at_50"] == pytest.approx(dpsh_calc_topmap(qB, rB, one_hot[ql], one_hot[rl], 50), abs=1e-6)


# ------------------------------------------------------------------ bad input

def test_bad_input():
    with pytest.raises(ValueError, match="db_codes: expected codes of 4 bits to match query_codes, got 2"):
        hashing_scores(Q, Q_Y, DB[:, :2], DB_Y)
    with pytest.raises(ValueError, match="db_labels: expected 6 rows to match db_codes, got 5"):
        hashing_scores(Q, Q_Y, DB, DB_Y[:5])
    with pytest.raises(TypeError, match="query_labels: expected integer"):
        hashing_scores(Q, Q_Y.float(), DB, DB_Y)
    with pytest.raises(ValueError, match="db_labels: expected the same label form as query_labels"):
        hashing_scores(Q, Q_Y, DB, torch.ones(6, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="query_real and db_real must be given together"):
        hashing_scores(Q, Q_Y, DB, DB_Y, query_real=Q.double())
    with pytest.raises(ValueError, match=r"query_real/db_real: expected shapes \(3, D\) and \(6, D\)"):
        hashing_scores(Q, Q_Y, DB, DB_Y, query_real=Q.double(), db_real=DB[:5].double())
    with pytest.raises(ValueError, match="db_real: contains NaN"):
        hashing_scores(Q, Q_Y, DB, DB_Y, query_real=Q.double(), db_real=torch.full((6, 4), float("nan")))
    with pytest.raises(ValueError, match="top_k: expected an integer >= 1, got 0"):
        hashing_scores(Q, Q_Y, DB, DB_Y, top_k=0)
    with pytest.raises(ValueError, match="precision_ns: expected an integer >= 1, got 2.5"):
        hashing_scores(Q, Q_Y, DB, DB_Y, precision_ns=(2.5,))
    with pytest.raises(ValueError, match="radius: expected an integer >= 0, got -1"):
        hashing_scores(Q, Q_Y, DB, DB_Y, radius=-1)
    with pytest.raises(ValueError, match="chunk_size: expected an integer >= 1, got 0"):
        hashing_scores(Q, Q_Y, DB, DB_Y, chunk_size=0)
    with pytest.raises(ValueError, match="expected at least one code each, got 0 and 6"):
        hashing_scores(Q[:0], Q_Y[:0], DB, DB_Y)
    with pytest.raises(ValueError, match="no query has a relevant item in the database"):
        hashing_scores(Q, torch.tensor([7, 8, 9]), DB, DB_Y)
    with pytest.raises(ValueError, match="query_codes: contains NaN"):
        hashing_scores(torch.full((3, 4), float("nan")), Q_Y, DB, DB_Y)


def test_multi_hot_integer_labels_are_warned_about():
    # DeepHash-pytorch keeps NUS-WIDE / MS-COCO labels as int 0/1 matrices; as integers they are a
    # hierarchy (relevant only when the whole label set is equal), so the trap is named
    multi_hot = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1]])
    codes = torch.tensor([[1, 1], [1, -1], [-1, -1]])
    with pytest.warns(UserWarning, match=r"query_labels: integer labels of shape \(3, 3\) are read as a 3-level "
                                         r"hierarchy .* pass them as bool") as caught:
        as_hierarchy = hashing_scores(codes, multi_hot, codes, multi_hot, precision_ns=(1,), radius=None)
    assert caught[0].filename == __file__  # the caller's line, however deep the check (it pointed inside)
    as_sets = hashing_scores(codes, multi_hot.astype(bool), codes, multi_hot.astype(bool), precision_ns=(1,),
                             radius=None)
    assert "level_0" in as_hierarchy and "level_0" not in as_sets
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hashing_scores(codes, np.array([[0, 1], [0, 2], [1, 3]]), codes, np.array([[0, 1], [0, 2], [1, 3]]),
                       precision_ns=(1,), radius=None)  # a hierarchy with other values: no warning
        two_levels = np.array([[0, 1], [0, 0], [1, 0]])  # 0/1 in two levels: a small hierarchy, left alone
        hashing_scores(codes, two_levels, codes, two_levels, precision_ns=(1,), radius=None)
