"""Greedy, sampled and beam-search decoding with the key/value cache."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import EOS_ID, PAD_ID, create_transformer, decoding

SOURCE = jnp.array([[3, 4, 5, 6, 1, 0], [2, 2, 1, 0, 0, 0], [7, 1, 0, 0, 0, 0]])
MAX_LEN = 7


@pytest.fixture(scope="module")
def model_and_params():
    model = create_transformer("micro", vocab_size=12, max_length=16, dropout_rate=0.0)
    params = model.init(jax.random.key(0), SOURCE, SOURCE)["params"]
    return model, params


@functools.partial(jax.jit, static_argnums=(0,))
def _full_logits(model, params, source, targets):
    return model.apply({"params": params}, source, targets)


def greedy_without_cache(model, params, source, max_len):
    """Reference: recompute the whole prefix every step (no cache)."""
    tokens = np.zeros((source.shape[0], max_len), np.int32)
    finished = np.zeros(source.shape[0], bool)
    for i in range(max_len):
        # Position i only needs targets < i; a non-pad placeholder keeps its query unmasked.
        probe = tokens.copy()
        probe[:, i] = 2
        logits = np.array(_full_logits(model, params, source, jnp.asarray(probe)))[:, i]
        logits[:, PAD_ID] = -np.inf
        choice = np.where(finished, PAD_ID, logits.argmax(-1))
        tokens[:, i] = choice
        finished |= choice == EOS_ID
    return tokens


def _decode(model, params, **kwargs):
    fn = jax.jit(lambda p, s, r: decoding.decode(model, p, s, max_decode_length=MAX_LEN, rng=r,
                                                 **kwargs))
    return np.asarray(fn(params, SOURCE, jax.random.key(5)))


def test_greedy_with_cache_equals_greedy_without_cache(model_and_params):
    model, params = model_and_params
    np.testing.assert_array_equal(_decode(model, params, strategy="greedy"),
                                  greedy_without_cache(model, params, SOURCE, MAX_LEN))


def test_cached_logits_equal_full_pass_at_every_position(model_and_params):
    model, params = model_and_params
    targets = jnp.array([[5, 4, 3, 2, 1], [9, 8, 1, 0, 0], [6, 6, 6, 6, 6]])
    full = np.asarray(_full_logits(model, params, SOURCE, targets))
    encoded = model.apply({"params": params}, SOURCE, method="encode")
    step = jax.jit(decoding.make_tokens_to_logits(model, params, encoded, SOURCE))
    cache = decoding.init_cache(model, 3, SOURCE.shape[1], targets.shape[1])
    token = jnp.zeros((3, 1), jnp.int32)
    for t in range(targets.shape[1]):
        logits, cache = step(token, cache)
        valid = np.asarray(targets[:, t] > 0)
        expected = full[:, t].copy()
        expected[:, PAD_ID] = decoding.NEG_INF
        np.testing.assert_allclose(np.asarray(logits)[valid], expected[valid], atol=1e-5)
        token = targets[:, t:t + 1]


def test_beam_size_one_with_alpha_zero_equals_greedy(model_and_params):
    model, params = model_and_params
    np.testing.assert_array_equal(
        _decode(model, params, strategy="beam", beam_size=1, alpha=0.0),
        _decode(model, params, strategy="greedy"))


@pytest.mark.slow
def test_beam_scores_sorted_and_best_first(model_and_params):
    model, params = model_and_params
    sequences, scores = jax.jit(lambda p, s: decoding.decode(
        model, p, s, max_decode_length=MAX_LEN, strategy="beam", beam_size=4,
        return_all_beams=True))(params, SOURCE)
    scores = np.asarray(scores)
    assert sequences.shape == (3, 4, MAX_LEN)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    best = _decode(model, params, strategy="beam", beam_size=4)
    np.testing.assert_array_equal(best, np.asarray(sequences)[:, 0])


@pytest.mark.slow
def test_beam_score_is_length_normalised_log_probability(model_and_params):
    model, params = model_and_params
    sequences, scores = decoding.decode(model, params, SOURCE, max_decode_length=MAX_LEN,
                                        strategy="beam", beam_size=3, alpha=0.6,
                                        return_all_beams=True)
    sequences, scores = np.asarray(sequences), np.asarray(scores)
    for b in range(3):
        seq = sequences[b, 0]
        length = int(np.argmax(seq == EOS_ID)) + 1 if EOS_ID in seq else MAX_LEN
        targets = np.zeros((1, MAX_LEN), np.int32)
        targets[0, :length] = seq[:length]
        logits = np.array(_full_logits(model, params, SOURCE[b:b + 1], jnp.asarray(targets)))
        logits[..., PAD_ID] = decoding.NEG_INF
        log_probs = jax.nn.log_softmax(logits[0, :length])
        total = float(sum(log_probs[i, seq[i]] for i in range(length)))
        expected = total / ((5.0 + length) / 6.0) ** 0.6
        np.testing.assert_allclose(scores[b, 0], expected, rtol=1e-4)


@pytest.mark.slow
def test_top_k_one_sampling_equals_greedy(model_and_params):
    model, params = model_and_params
    np.testing.assert_array_equal(
        _decode(model, params, strategy="sample", top_k=1),
        _decode(model, params, strategy="greedy"))


def test_sampling_is_reproducible_with_a_seed(model_and_params):
    model, params = model_and_params
    run = jax.jit(lambda p, s, r: decoding.decode(
        model, p, s, max_decode_length=MAX_LEN, strategy="sample", temperature=2.0, rng=r))
    a = np.asarray(run(params, SOURCE, jax.random.key(1)))
    b = np.asarray(run(params, SOURCE, jax.random.key(1)))
    np.testing.assert_array_equal(a, b)
    others = [np.asarray(run(params, SOURCE, jax.random.key(seed))) for seed in range(2, 6)]
    assert any(not np.array_equal(a, o) for o in others)


def test_tokens_after_eos_are_padding_and_early_finish():
    """A model that emits EOS at once for example 0 and never for example 1."""
    vocab = 6

    def tokens_to_logits(tokens, cache):
        step = cache
        logits = jnp.full((2, vocab), -5.0)
        logits = logits.at[0, EOS_ID].set(5.0)  # example 0: EOS immediately
        logits = logits.at[1, 3].set(5.0)  # example 1: token 3 forever
        return logits, step + 1

    out = decoding.greedy_search(tokens_to_logits, jnp.array(0), 2, 5)
    np.testing.assert_array_equal(out, [[EOS_ID, 0, 0, 0, 0], [3, 3, 3, 3, 3]])

    def stop_after_two(tokens, cache):
        logits = jnp.full((2, vocab), -5.0)
        logits = jnp.where(cache >= 1, logits.at[:, EOS_ID].set(5.0), logits.at[:, 4].set(5.0))
        return logits, cache + 1

    def counting(tokens, cache):
        logits, cache = stop_after_two(tokens, cache)
        return logits, cache

    out = decoding.greedy_search(counting, jnp.array(0), 2, 6)
    np.testing.assert_array_equal(out, [[4, EOS_ID, 0, 0, 0, 0]] * 2)


def test_beam_search_eos_handling_and_early_stop():
    """Beams end at EOS; tokens after EOS are padding; the loop stops once all finished."""
    calls = []

    def tokens_to_logits(tokens, cache):
        # Every beam: EOS is the most likely token after the first step.
        first = jnp.array([-3.0, -9.0, 0.0, -1.0, -2.0])
        later = jnp.array([-9.0, 0.0, -2.0, -3.0, -4.0])
        logits = jnp.where(cache == 0, first, later)
        calls.append(1)
        return jnp.tile(logits[None], (tokens.shape[0], 1)), cache + 1

    seqs, scores = jax.jit(lambda c: decoding.beam_search(
        tokens_to_logits, c, 1, 2, 6, alpha=0.0))(jnp.array(0))
    seqs = np.asarray(seqs)
    np.testing.assert_array_equal(seqs[0, 0], [2, EOS_ID, 0, 0, 0, 0])
    assert seqs[0, 1, 1] == EOS_ID and np.all(seqs[0, :, 2:] == 0)
    assert scores[0, 0] >= scores[0, 1]


def test_filter_logits_top_p_and_errors():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.asarray(decoding.filter_logits(logits, top_p=0.7)) > decoding.NEG_INF / 2
    np.testing.assert_array_equal(kept, [[True, True, False, False]])
    kept = np.asarray(decoding.filter_logits(logits, top_k=3)) > decoding.NEG_INF / 2
    np.testing.assert_array_equal(kept, [[True, True, True, False]])
    with pytest.raises(ValueError, match="temperature"):
        decoding.filter_logits(logits, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        decoding.filter_logits(logits, top_p=0.0)


def test_top_p_keeps_the_smallest_prefix_even_among_tied_tokens():
    """Tied logits (frequent in bf16) all passed a cutoff by value: [0.4, 0.2, 0.2, 0.2] at
    p=0.5 kept the four tokens where two reach the mass; a second row checks rows apart."""
    logits = jnp.log(jnp.array([[0.4, 0.2, 0.2, 0.2], [0.1, 0.2, 0.2, 0.5]]))
    kept = np.asarray(decoding.filter_logits(logits, top_p=0.5)) > decoding.NEG_INF / 2
    np.testing.assert_array_equal(kept, [[True, True, False, False],
                                         [False, False, False, True]])
    kept = np.asarray(decoding.filter_logits(logits, top_p=0.6)) > decoding.NEG_INF / 2
    np.testing.assert_array_equal(kept.sum(-1), [2, 2])


def test_top_k_keeps_exactly_k_tokens_among_ties_as_greedy_would():
    """By rank, lower token id first among ties (as ``argmax``): a cutoff by value kept
    both tokens tied at the top, so top_k=1 could sample what greedy never picks."""
    logits = jnp.array([[0.0, 0.5, 2.0, 2.0, 1.0], [3.0, 1.0, 1.0, 1.0, 0.0]])
    kept = np.asarray(decoding.filter_logits(logits, top_k=1)) > decoding.NEG_INF / 2
    np.testing.assert_array_equal(kept, [[False, False, True, False, False],
                                         [True, False, False, False, False]])
    assert np.array_equal(np.argmax(kept, -1), np.argmax(np.asarray(logits), -1))
    kept = np.asarray(decoding.filter_logits(logits, top_k=2)) > decoding.NEG_INF / 2
    np.testing.assert_array_equal(kept, [[False, False, True, True, False],
                                         [True, True, False, False, False]])


def test_top_k_beyond_the_vocabulary_keeps_every_token():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.asarray(decoding.filter_logits(logits, top_k=20)) > decoding.NEG_INF / 2
    assert kept.all()


def test_decode_argument_errors(model_and_params):
    model, params = model_and_params
    with pytest.raises(ValueError, match="strategy"):
        decoding.decode(model, params, SOURCE, max_decode_length=4, strategy="viterbi")
    with pytest.raises(ValueError, match="rng"):
        decoding.decode(model, params, SOURCE, max_decode_length=4, strategy="sample")
    with pytest.raises(ValueError, match="max_decode_length"):
        decoding.decode(model, params, SOURCE, max_decode_length=0)
    with pytest.raises(ValueError, match=rf"max_decode_length={model.max_length + 1} must be "
                                         rf"in \[1, model.max_length={model.max_length}\]"):
        decoding.decode(model, params, SOURCE, max_decode_length=model.max_length + 1)


def test_source_ids_outside_the_vocabulary_fail_before_decoding(model_and_params):
    # Unchecked, id 12 of a 12-token vocabulary embeds as NaN and greedy decoding emits EOS.
    model, params = model_and_params
    bad = SOURCE.at[0, 2].set(12)
    with pytest.raises(ValueError, match=r"inputs token ids must be in \[0, 12\)"):
        decoding.decode(model, params, bad, max_decode_length=4)
    decoder = decoding.make_decoder(model, max_decode_length=MAX_LEN)
    with pytest.raises(ValueError, match=r"got ids from -1 to 7"):  # the jitted entry checks too
        decoder(params, SOURCE.at[1, 0].set(-1))
    np.testing.assert_array_equal(decoder(params, SOURCE), _decode(model, params))


def _step_table_model(probabilities):
    """A fake one-step decoder whose next-token probabilities depend on the step alone:
    ``probabilities[t]`` ``[vocab]`` at step ``t`` (the cache is the step counter), PAD never.
    Hypotheses' log-probabilities are then sums that can be written out by hand."""
    logits = jnp.log(jnp.asarray(probabilities, jnp.float32)).at[:, PAD_ID].set(
        decoding.NEG_INF)

    def tokens_to_logits(tokens, step):
        return jnp.tile(logits[step][None], (tokens.shape[0], 1)), step + 1

    return tokens_to_logits


def test_beam_search_without_eos_returns_the_best_live_beams_scored_at_their_length():
    """No hypothesis ends (EOS has probability ~0): the example falls back to its live beams,
    which must be the two most probable distinct sequences, scored log p / ((5 + 3) / 6)^α
    at their length 3. Step by step (tokens 2 and 3): .7/.3, then .6/.4, then .8/.2, so the
    best two of the eight sequences are 2 2 2 (.336) and 2 3 2 (.224)."""
    eos = 1e-12
    model = _step_table_model([[0.0, eos, 0.7, 0.3], [0.0, eos, 0.6, 0.4],
                               [0.0, eos, 0.8, 0.2]])
    seqs, scores = jax.jit(lambda c: decoding.beam_search(model, c, 1, 2, 3, alpha=0.6))(
        jnp.array(0))
    np.testing.assert_array_equal(seqs[0], [[2, 2, 2], [2, 3, 2]])
    penalty = ((5.0 + 3) / 6.0) ** 0.6
    np.testing.assert_allclose(scores[0], np.log([0.336, 0.224]) / penalty, rtol=1e-5)


def test_beam_search_does_not_stop_while_a_live_beam_can_still_win_on_length():
    """Early stopping compares the best finished score with the best a live hypothesis could
    still reach: its log-probability under the largest length penalty, ((5 + L) / 6)^α. With
    α = 1 a longer hypothesis can overtake a short finished one: [EOS] at step 0 scores
    ln .55 = -0.598, while 2 2 2 EOS (probability .45 · .99³) scores -0.829 / 1.5 = -0.553."""
    model = _step_table_model([[0.0, 0.55, 0.45, 0.0], [0.0, 0.01, 0.99, 0.0],
                               [0.0, 0.01, 0.99, 0.0], [0.0, 0.99, 0.01, 0.0]])
    seqs, scores = jax.jit(lambda c: decoding.beam_search(model, c, 1, 1, 4, alpha=1.0))(
        jnp.array(0))
    np.testing.assert_array_equal(seqs[0, 0], [2, 2, 2, EOS_ID])
    np.testing.assert_allclose(scores[0, 0], np.log(0.45 * 0.99**3) / 1.5, rtol=1e-5)


def test_filter_logits_divides_by_the_temperature():
    logits = jnp.array([[2.0, -1.0, 0.5, 4.0]])
    np.testing.assert_allclose(decoding.filter_logits(logits, temperature=2.0), logits / 2.0)
    np.testing.assert_allclose(decoding.filter_logits(logits, temperature=0.5), logits * 2.0)


def test_sampling_draws_each_step_from_the_tempered_softmax_with_a_fresh_key():
    """2000 sequences of two steps from fixed logits ln [., ., .6, .3, .1] at T = 2: the
    tokens' frequencies at each step are softmax(logits / T) ∝ √p, and the two steps are
    independent draws (a key reused across steps would repeat the first token)."""
    probs = np.array([0.0, 0.0, 0.6, 0.3, 0.1])
    model = _step_table_model([probs, probs])
    tokens = np.asarray(jax.jit(lambda c, r: decoding.sample(
        model, c, 2000, 2, r, temperature=2.0))(jnp.array(0), jax.random.key(0)))
    tempered = np.sqrt(probs) / np.sqrt(probs).sum()
    for step in range(2):
        frequencies = np.bincount(tokens[:, step], minlength=5) / 2000
        # Standard deviations of at most 0.011.
        np.testing.assert_allclose(frequencies, tempered, atol=0.04)
    repeated = np.mean(tokens[:, 0] == tokens[:, 1])
    assert abs(repeated - np.sum(tempered**2)) < 0.05, repeated


def test_beam_search_reorders_the_cache_to_follow_the_live_beams():
    """The cache rows must follow the live hypotheses they belong to, not the best
    candidates of the step (an EOS candidate among those takes no live row). A fake decoder
    whose cache holds each row's first token, and whose next-token probabilities depend on
    it; beam 2, α = 0 (scores are log-probabilities):

    - step 0: EOS .2, 2 .5, 3 .3: live [2], [3].
    - step 1, after 2: EOS .6, 2 .3, 3 .1; after 3: EOS .05, 2 .9, 3 .05. Best: [2 EOS] .30
      (finished), [3 2] .27 and [2 2] .15 (live, from rows 1 and 0: the rows swap).
    - step 2, first token 2: EOS .5; first token 3: EOS .9. So [3 2 EOS] = .243 and
      [2 2 EOS] = .075, where swapped caches would give .135 and .135.
    """
    table = np.zeros((3, 4, 4))  # [step, first token, next token]
    table[0, :] = [0.0, 0.2, 0.5, 0.3]
    table[1, 2], table[1, 3] = [0.0, 0.6, 0.3, 0.1], [0.0, 0.05, 0.9, 0.05]
    table[2, 2], table[2, 3] = [0.0, 0.5, 0.25, 0.25], [0.0, 0.9, 0.05, 0.05]
    logits_table = jnp.log(jnp.asarray(table, jnp.float32)).at[..., PAD_ID].set(
        decoding.NEG_INF)

    def tokens_to_logits(tokens, cache):
        step, first = cache
        first = jnp.where(step == 1, tokens[:, 0], first)
        return logits_table[step, first], (step + 1, first)

    cache = (jnp.array(0), jnp.zeros((2,), jnp.int32))  # batch 1 x beam 2 rows
    seqs, scores = jax.jit(lambda c: decoding.beam_search(tokens_to_logits, c, 1, 2, 3,
                                                          alpha=0.0))(cache)
    np.testing.assert_array_equal(seqs[0], [[2, EOS_ID, PAD_ID], [3, 2, EOS_ID]])
    np.testing.assert_allclose(scores[0], np.log([0.3, 0.27 * 0.9]), rtol=1e-5)


def test_output_limits_are_the_source_length_plus_extra_within_the_maximum():
    """The paper's "input length + 50" (§6.1): SOURCE's rows hold 5, 3 and 2 non-PAD tokens."""
    np.testing.assert_array_equal(decoding.output_limits(SOURCE, 3, MAX_LEN), [7, 6, 5])
    np.testing.assert_array_equal(decoding.output_limits(SOURCE, 50, 9), [9, 9, 9])


def test_greedy_and_sampling_stop_each_example_at_its_own_limit():
    """A decoder that never ends (token 3 for example 0, 4 for example 1): each output is
    cut at its limit, PAD after it, as every output is at max_decode_length."""

    def never_ending(tokens, step):
        logits = jnp.full((2, 6), -5.0).at[0, 3].set(5.0).at[1, 4].set(5.0)
        return logits, step + 1

    limits = jnp.array([2, 4])
    expected = [[3, 3, 0, 0, 0], [4, 4, 4, 4, 0]]
    np.testing.assert_array_equal(
        decoding.greedy_search(never_ending, jnp.array(0), 2, 5, max_lengths=limits), expected)
    np.testing.assert_array_equal(
        decoding.sample(never_ending, jnp.array(0), 2, 5, jax.random.key(0), top_k=1,
                        max_lengths=limits), expected)


def test_beam_search_with_a_limit_is_beam_search_cut_at_that_length():
    """Two examples under the step table of the live-beam test (no EOS), limits 3 and 2:
    example 0 gets what a search of length 3 gives (2 2 2 and 2 3 2), example 1 what a search
    of length 2 gives (2 2 at .42 and 2 3 at .28), scored at length 2, then PAD."""
    eos = 1e-12
    model = _step_table_model([[0.0, eos, 0.7, 0.3], [0.0, eos, 0.6, 0.4],
                               [0.0, eos, 0.8, 0.2]])
    seqs, scores = jax.jit(lambda c: decoding.beam_search(
        model, c, 2, 2, 3, alpha=0.6, max_lengths=jnp.array([3, 2])))(jnp.array(0))
    np.testing.assert_array_equal(seqs[0], [[2, 2, 2], [2, 3, 2]])
    np.testing.assert_array_equal(seqs[1], [[2, 2, 0], [2, 3, 0]])
    penalty = lambda length: ((5.0 + length) / 6.0) ** 0.6  # noqa: E731
    np.testing.assert_allclose(scores[0], np.log([0.336, 0.224]) / penalty(3), rtol=1e-5)
    np.testing.assert_allclose(scores[1], np.log([0.42, 0.28]) / penalty(2), rtol=1e-5)


def test_extra_length_cuts_greedy_decoding_at_each_source_length_plus_extra(model_and_params):
    """``decode(extra_length=1)``: the same tokens as without a limit up to each example's
    limit (6, 4 and 3 for SOURCE), PAD from there on."""
    model, params = model_and_params
    full = _decode(model, params, strategy="greedy")
    limited = _decode(model, params, strategy="greedy", extra_length=1)
    for row, limit in enumerate([6, 4, 3]):
        np.testing.assert_array_equal(limited[row, :limit], full[row, :limit])
        assert np.all(limited[row, limit:] == PAD_ID)
    with pytest.raises(ValueError, match="extra_length=-1 must be >= 0"):
        decoding.decode(model, params, SOURCE, max_decode_length=MAX_LEN, extra_length=-1)
