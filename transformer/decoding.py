"""Step-by-step decoding for the seq2seq ``Transformer``: greedy, sampling and beam search.

Every strategy is a ``lax.while_loop`` over output positions that feeds one token per step to
the decoder with its key/value cache (so a step costs O(length) attention work, not
O(length²)), and stops early once every sequence of the batch has produced ``EOS_ID``.
Outputs are ``[batch, max_decode_length]`` int32 with ``EOS_ID`` kept and ``PAD_ID`` after it.
``max_lengths`` ``[batch]`` optionally limits each example's output further, as the paper's
"input length + 50" (``output_limits``): an example stops at its limit, cut off (no ``EOS``),
as every example does at ``max_decode_length``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from transformer.masks import PAD_ID
from transformer.model import EOS_ID, Transformer
from transformer.token_ids import check_token_ids

Array = jnp.ndarray
NEG_INF = -1.0e7

# (token [batch, 1], cache) -> (logits [batch, vocab], cache)
TokensToLogits = Callable[[Array, Any], tuple[Array, Any]]


# ----------------------------------------------------------------------------- model plumbing
def init_cache(model: Transformer, batch_size: int, source_length: int,
               max_decode_length: int) -> Any:
    """Zero key/value caches for ``batch_size`` sequences of up to ``max_decode_length``."""
    decoder = model.clone(decoding=True)
    shapes = jax.eval_shape(
        decoder.init, jax.random.key(0),
        jnp.ones((batch_size, source_length), jnp.int32),
        jnp.ones((batch_size, max_decode_length), jnp.int32),
    )["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def make_tokens_to_logits(model: Transformer, params: Any, encoded: Array,
                          inputs: Array) -> TokensToLogits:
    """The one-step decoder over a fixed encoder output ``[batch, source_length, emb_dim]``.

    ``PAD_ID`` is never a valid output (it marks padding and the start), so its logit is
    removed here, for every strategy.
    """
    decoder = model.clone(decoding=True)

    def tokens_to_logits(tokens: Array, cache: Any) -> tuple[Array, Any]:
        logits, state = decoder.apply(
            {"params": params, "cache": cache}, encoded, inputs, tokens,
            method="decode", mutable=["cache"],
        )
        return logits[:, 0].at[:, PAD_ID].set(NEG_INF), state["cache"]

    return tokens_to_logits


def check_max_decode_length(max_decode_length: int, model: Transformer) -> None:
    """Raises unless ``1 <= max_decode_length <= model.max_length`` (the position table's
    length, which the decode cache indexes)."""
    if not 1 <= max_decode_length <= model.max_length:
        raise ValueError(f"max_decode_length={max_decode_length} must be in [1, "
                         f"model.max_length={model.max_length}]")


def _check_decode_args(inputs: Array, max_decode_length: int, model: Transformer) -> None:
    if inputs.ndim != 2:
        raise ValueError(f"inputs must be [batch, source_length] token ids; got {inputs.shape}")
    check_max_decode_length(max_decode_length, model)
    check_token_ids(inputs, model.vocab_size, "inputs")


# ----------------------------------------------------------------------------- token choice
def filter_logits(logits: Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> Array:
    """Temperature, then top-k, then nucleus (top-p) filtering of ``[batch, vocab]`` logits.

    Filtered-out entries get ``NEG_INF``; the most likely token always survives.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 (use greedy decoding for 0)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        if top_k < 0:
            raise ValueError(f"top_k={top_k} must be >= 0")
        # Exactly k by rank, as top-p below: a cutoff by value (HF's transformers) keeps
        # every token tied with the k-th, so top_k=1 was not greedy on tied logits.
        # ``lax.top_k`` puts the lower token id first among ties, as ``argmax`` picks.
        # A k beyond the vocabulary keeps everything.
        _, top = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))
        rows = jnp.arange(logits.shape[0])[:, None]
        keep = jnp.zeros(logits.shape, bool).at[rows, top].set(True)
        logits = jnp.where(keep, logits, NEG_INF)
    if top_p < 1.0:
        # By rank, not by logit value: tokens tied with the last one kept would all pass a
        # value cutoff (bf16 logits tie often), and the kept mass could be far above top_p.
        order = jnp.argsort(-logits, axis=-1)  # stable: ties by token id
        sorted_probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token once the mass
        # before it does (the most likely token is always kept).
        drop_sorted = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs >= top_p
        rows = jnp.arange(logits.shape[0])[:, None]
        drop = jnp.zeros_like(drop_sorted).at[rows, order].set(drop_sorted)
        logits = jnp.where(drop, NEG_INF, logits)
    return logits


def output_limits(inputs: Array, extra: int, max_decode_length: int) -> Array:
    """``[batch]`` output length limits: each source's length (its non-``PAD`` tokens, ``EOS``
    included) plus ``extra``, at most ``max_decode_length``. With ``extra=50``, the maximum
    output length of "Attention Is All You Need" (§6.1: input length + 50)."""
    lengths = jnp.sum(inputs != PAD_ID, axis=-1)
    return jnp.minimum(lengths + extra, max_decode_length).astype(jnp.int32)


def _limits(max_lengths: Array | None, batch_size: int, max_decode_length: int) -> Array:
    """``max_lengths`` as ``[batch]`` int32 (``max_decode_length`` for every example if None)."""
    if max_lengths is None:
        return jnp.full((batch_size,), max_decode_length, jnp.int32)
    return jnp.minimum(jnp.asarray(max_lengths, jnp.int32), max_decode_length)


def _sequential_decode(tokens_to_logits: TokensToLogits, cache: Any, batch_size: int,
                       max_decode_length: int, choose: Callable[[Array, Array], Array],
                       rng: Array, eos_id: int, max_lengths: Array | None = None) -> Array:
    """Shared loop of greedy and sampled decoding; ``choose(logits, rng) -> tokens [batch]``.
    An example ends at ``EOS`` or after ``max_lengths`` tokens."""
    limits = _limits(max_lengths, batch_size, max_decode_length)

    def cond(state):
        index, _, _, _, finished, _ = state
        return (index < max_decode_length) & ~jnp.all(finished)

    def body(state):
        index, token, cache, sequences, finished, rng = state
        rng, step_rng = jax.random.split(rng)
        logits, cache = tokens_to_logits(token[:, None], cache)
        next_token = jnp.where(finished, PAD_ID, choose(logits, step_rng))
        sequences = jax.lax.dynamic_update_slice(sequences, next_token[:, None], (0, index))
        finished = finished | (next_token == eos_id) | (index + 1 >= limits)
        return index + 1, next_token, cache, sequences, finished, rng

    initial = (
        jnp.array(0, jnp.int32),
        jnp.full((batch_size,), PAD_ID, jnp.int32),  # the decoder's start token
        cache,
        jnp.full((batch_size, max_decode_length), PAD_ID, jnp.int32),
        limits <= 0,
        rng,
    )
    return jax.lax.while_loop(cond, body, initial)[3]


def greedy_search(tokens_to_logits: TokensToLogits, cache: Any, batch_size: int,
                  max_decode_length: int, eos_id: int = EOS_ID,
                  max_lengths: Array | None = None) -> Array:
    """Arg-max token at every step. Returns ``[batch, max_decode_length]`` int32."""
    return _sequential_decode(
        tokens_to_logits, cache, batch_size, max_decode_length,
        lambda logits, _: jnp.argmax(logits, axis=-1).astype(jnp.int32),
        jax.random.key(0), eos_id, max_lengths)


def sample(tokens_to_logits: TokensToLogits, cache: Any, batch_size: int,
           max_decode_length: int, rng: Array, *, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, eos_id: int = EOS_ID, max_lengths: Array | None = None) -> Array:
    """Samples each token from the filtered softmax. Returns ``[batch, max_decode_length]``."""

    def choose(logits, step_rng):
        filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        return jax.random.categorical(step_rng, filtered, axis=-1).astype(jnp.int32)

    return _sequential_decode(tokens_to_logits, cache, batch_size, max_decode_length, choose,
                              rng, eos_id, max_lengths)


# ----------------------------------------------------------------------------- beam search
def length_penalty(length: Array, alpha: float) -> Array:
    """GNMT's length penalty ((5 + length) / 6)^alpha (Wu et al., 2016, eq. 14)."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def expand_to_beams(tree: Any, beam_size: int, batch_axis: int = 0) -> Any:
    """Repeats every array's ``batch_axis`` entries ``beam_size`` times: ``[b, ...]`` ->
    ``[b * beam_size, ...]`` with the beams of one example adjacent. Arrays with fewer than
    ``batch_axis + 1`` dimensions (cache indices) are left alone."""
    return jax.tree.map(
        lambda x: jnp.repeat(x, beam_size, axis=batch_axis) if x.ndim > batch_axis else x, tree)


def _gather_beams(tree: Any, parents: Array, batch_size: int, beam_size: int,
                  batch_axis: int = 0) -> Any:
    """Reorders flattened ``[batch * beam, ...]`` arrays so beam ``k`` of example ``b`` takes
    the state of beam ``parents[b, k]``."""
    flat_index = (jnp.arange(batch_size)[:, None] * beam_size + parents).reshape(-1)
    return jax.tree.map(
        lambda x: jnp.take(x, flat_index, axis=batch_axis) if x.ndim > batch_axis else x, tree)


def beam_search(tokens_to_logits: TokensToLogits, cache: Any, batch_size: int, beam_size: int,
                max_decode_length: int, *, alpha: float = 0.6, eos_id: int = EOS_ID,
                cache_batch_axis: int = 0,
                max_lengths: Array | None = None) -> tuple[Array, Array]:
    """Beam search with GNMT length normalisation and early stopping.

    ``cache`` must already be expanded to ``batch_size * beam_size`` rows
    (``expand_to_beams``). A hypothesis ending in ``eos_id`` is finished only when it ranks
    among the ``beam_size`` best candidates of its step (as in fairseq), so ``beam_size=1``
    with ``alpha=0`` is exactly greedy decoding. The loop stops when no live hypothesis can
    beat the worst finished one of any example. As in Flax's WMT example and T2T, an example
    that finished any hypothesis returns its finished ones only; hypotheses still live at
    ``max_decode_length`` (no ``EOS``: cut off, not ended) are returned only by examples
    that finished none. With ``max_lengths`` ``[batch]`` each example stops at its own
    limit: its hypotheses are frozen from there on, as all are at ``max_decode_length``.

    Returns:
      sequences ``[batch, beam_size, max_decode_length]`` and scores ``[batch, beam_size]``
      (log-probability / length penalty), best first.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size={beam_size} must be >= 1")
    batch, beams, length = batch_size, beam_size, max_decode_length
    limits = _limits(max_lengths, batch, length)
    # A live hypothesis can at best keep its log-probability up to the longest length it may
    # reach, its example's limit.
    best_possible_penalty = length_penalty(limits, alpha)

    def cond(state):
        index, _, live_logprobs, _, finished_scores, _ = state
        best_live = jnp.max(live_logprobs, axis=-1) / best_possible_penalty
        worst_finished = jnp.min(finished_scores, axis=-1)
        done = (worst_finished >= best_live) | (index >= limits)
        return (index < length) & ~jnp.all(done)

    def body(state):
        index, live_seqs, live_logprobs, finished_seqs, finished_scores, cache = state
        last_tokens = jax.lax.dynamic_slice_in_dim(
            jnp.pad(live_seqs, ((0, 0), (0, 0), (1, 0)), constant_values=PAD_ID), index, 1,
            axis=2)
        logits, cache = tokens_to_logits(last_tokens.reshape(batch * beams, 1), cache)
        vocab = logits.shape[-1]
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, beams, vocab)
        candidates = (live_logprobs[..., None] + log_probs).reshape(batch, beams * vocab)
        top_logprobs, top_index = jax.lax.top_k(candidates, 2 * beams)
        parents, tokens = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        top_seqs = jnp.take_along_axis(live_seqs, parents[..., None], axis=1)
        top_seqs = jax.lax.dynamic_update_slice(
            top_seqs, tokens[..., None], (0, 0, index))
        is_eos = tokens == eos_id

        # Live: the best beam_size candidates that did not end.
        live_candidates = jnp.where(is_eos, NEG_INF, top_logprobs)
        new_live_logprobs, live_pick = jax.lax.top_k(live_candidates, beams)
        new_live_seqs = jnp.take_along_axis(top_seqs, live_pick[..., None], axis=1)
        cache = _gather_beams(cache, jnp.take_along_axis(parents, live_pick, axis=1),
                              batch, beams, cache_batch_axis)

        # Finished: candidates ending in EOS among the top beam_size of this step.
        in_top = jnp.arange(2 * beams)[None, :] < beams
        scores = top_logprobs / length_penalty(index + 1, alpha)
        scores = jnp.where(is_eos & in_top & (top_logprobs > NEG_INF / 2), scores, NEG_INF)
        merged_scores = jnp.concatenate([finished_scores, scores], axis=1)
        merged_seqs = jnp.concatenate([finished_seqs, top_seqs], axis=1)
        new_finished_scores, finished_pick = jax.lax.top_k(merged_scores, beams)
        new_finished_seqs = jnp.take_along_axis(merged_seqs, finished_pick[..., None], axis=1)
        # Examples at their limit keep their hypotheses (their cache rows are not read again).
        active = index < limits

        def keep(new, old):
            return jnp.where(active.reshape((batch,) + (1,) * (new.ndim - 1)), new, old)

        return (index + 1, keep(new_live_seqs, live_seqs),
                keep(new_live_logprobs, live_logprobs), keep(new_finished_seqs, finished_seqs),
                keep(new_finished_scores, finished_scores), cache)

    initial_logprobs = jnp.tile(
        jnp.array([0.0] + [NEG_INF] * (beams - 1), jnp.float32)[None], (batch, 1))
    empty = jnp.full((batch, beams, length), PAD_ID, jnp.int32)
    state = (jnp.array(0, jnp.int32), empty, initial_logprobs, empty,
             jnp.full((batch, beams), NEG_INF, jnp.float32), cache)
    index, live_seqs, live_logprobs, finished_seqs, finished_scores, _ = jax.lax.while_loop(
        cond, body, state)

    # Examples that never finished a hypothesis fall back to their live beams, which are as
    # long as the loop ran or as their example's limit.
    live_scores = live_logprobs / length_penalty(jnp.minimum(index, limits), alpha)[:, None]
    none_finished = jnp.all(finished_scores <= NEG_INF / 2, axis=-1)
    sequences = jnp.where(none_finished[:, None, None], live_seqs, finished_seqs)
    scores = jnp.where(none_finished[:, None], live_scores, finished_scores)
    return sequences, scores


# ----------------------------------------------------------------------------- entry point
STRATEGIES = ("greedy", "sample", "beam")


def decode(model: Transformer, params: Any, inputs: Array, *, max_decode_length: int,
           strategy: str = "greedy", beam_size: int = 4, alpha: float = 0.6,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           rng: Array | None = None, eos_id: int = EOS_ID,
           return_all_beams: bool = False,
           extra_length: int | None = None) -> Array | tuple[Array, Array]:
    """Encodes ``inputs`` ``[batch, source_length]`` once and decodes with ``strategy``.

    Returns ``[batch, max_decode_length]`` tokens; for ``strategy="beam"`` with
    ``return_all_beams`` the pair ``(sequences [batch, beam, length], scores [batch, beam])``.
    ``extra_length`` limits each example's output to its source length plus that many
    tokens (``output_limits``; the paper's 50), within ``max_decode_length``.
    Jit it with ``jax.jit(decode, static_argnames=(...))`` or through ``make_decoder``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not supported; expected one of {STRATEGIES}")
    _check_decode_args(inputs, max_decode_length, model)
    if extra_length is not None and extra_length < 0:
        raise ValueError(f"extra_length={extra_length} must be >= 0 (or None: no limit but "
                         "max_decode_length)")
    batch_size, source_length = inputs.shape
    max_lengths = (None if extra_length is None
                   else output_limits(inputs, extra_length, max_decode_length))
    encoded = model.apply({"params": params}, inputs, method="encode")
    if strategy != "beam":
        cache = init_cache(model, batch_size, source_length, max_decode_length)
        step = make_tokens_to_logits(model, params, encoded, inputs)
        if strategy == "greedy":
            return greedy_search(step, cache, batch_size, max_decode_length, eos_id,
                                 max_lengths=max_lengths)
        if rng is None:
            raise ValueError("strategy='sample' needs rng")
        return sample(step, cache, batch_size, max_decode_length, rng,
                      temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                      max_lengths=max_lengths)
    cache = init_cache(model, batch_size * beam_size, source_length, max_decode_length)
    step = make_tokens_to_logits(model, params, expand_to_beams(encoded, beam_size),
                                 expand_to_beams(inputs, beam_size))
    sequences, scores = beam_search(
        step, cache, batch_size, beam_size, max_decode_length, alpha=alpha, eos_id=eos_id,
        cache_batch_axis=1 if model.scan_layers else 0, max_lengths=max_lengths)
    return (sequences, scores) if return_all_beams else sequences[:, 0]


def make_decoder(model: Transformer, *, max_decode_length: int, strategy: str = "greedy",
                 **options: Any) -> Callable[..., Array]:
    """A jitted ``(params, inputs, rng=None) -> tokens`` for fixed decoding options; the
    inputs' token ids are checked on the host before the call (inside the jitted function
    they cannot be read)."""

    @jax.jit
    def run(params: Any, inputs: Array, rng: Array | None = None):
        return decode(model, params, inputs, max_decode_length=max_decode_length,
                      strategy=strategy, rng=rng, **options)

    def checked_run(params: Any, inputs: Array, rng: Array | None = None):
        check_token_ids(inputs, model.vocab_size, "inputs")
        return run(params, inputs, rng)

    return checked_run
