"""Decoding speed: tokens per second of greedy and beam-4 decoding, with and without the
key/value cache, at several output lengths.

  python -m benchmarks.decoding --configs=tiny,base --lengths=16,32,64 --out=bench/decoding.json

Every sequence is forced to run the full length (EOS is never chosen) so that lengths are
comparable. "No cache" recomputes the decoder over the whole target buffer at every step, as a
decoder without a cache must; its per-token cost grows with the length, the cached path's
stays flat. The JSON records, per configuration and strategy, the ratio of per-token time at
the longest and the shortest length (≈ 1 means linear total cost in output length).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks.common import environment, table, time_call, write_json
from trainer import host_memory
from transformer import EOS_ID, create_transformer, decoding

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["tiny", "base"],
                  "Transformer configs (transformer.TRANSFORMER_CONFIGS).")
flags.DEFINE_list("lengths", ["16", "32", "64"], "Output lengths.")
flags.DEFINE_list("strategies", ["greedy", "beam"], "greedy and/or beam (beam size 4).")
flags.DEFINE_integer("batch_size", 4, "Sources decoded together.")
flags.DEFINE_integer("source_length", 32, "Source length.")
flags.DEFINE_integer("vocab_size", 1024, "Vocabulary size.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (median).")
flags.DEFINE_bool("no_cache", True, "Also time decoding without the cache.")
flags.DEFINE_string("out", None, "JSON output path.")


def _never_eos(step):
    def wrapped(tokens, cache):
        logits, cache = step(tokens, cache)
        return logits.at[:, EOS_ID].set(decoding.NEG_INF), cache
    return wrapped


def cached_decoder(model, strategy: str, length: int):
    """Cached greedy / beam-4 decoding that always runs ``length`` steps."""

    def run(params, inputs):
        batch = inputs.shape[0]
        encoded = model.apply({"params": params}, inputs, method="encode")
        if strategy == "greedy":
            step = _never_eos(decoding.make_tokens_to_logits(model, params, encoded, inputs))
            cache = decoding.init_cache(model, batch, inputs.shape[1], length)
            return decoding.greedy_search(step, cache, batch, length)
        step = _never_eos(decoding.make_tokens_to_logits(
            model, params, decoding.expand_to_beams(encoded, 4),
            decoding.expand_to_beams(inputs, 4)))
        cache = decoding.init_cache(model, batch * 4, inputs.shape[1], length)
        return decoding.beam_search(step, cache, batch, 4, length, alpha=0.6)[0]

    return jax.jit(run)


def uncached_greedy(model, length: int):
    """Greedy decoding that reruns the decoder over the whole target buffer every step."""

    def run(params, inputs):
        encoded = model.apply({"params": params}, inputs, method="encode")

        def body(index, targets):
            # Position `index` only attends to earlier targets (causal mask); a non-pad
            # placeholder keeps its query row unmasked.
            probe = targets.at[:, index].set(2)
            logits = model.apply({"params": params}, encoded, inputs, probe, method="decode")
            logits = logits[:, index].at[:, EOS_ID].set(decoding.NEG_INF)
            logits = logits.at[:, 0].set(decoding.NEG_INF)
            return targets.at[:, index].set(jnp.argmax(logits, -1).astype(jnp.int32))

        targets = jnp.zeros((inputs.shape[0], length), jnp.int32)
        return jax.lax.fori_loop(0, length, body, targets)

    return jax.jit(run)


def benchmark(config_name: str, lengths: list[int], strategies: list[str], batch_size: int,
              source_length: int, vocab_size: int, repeats: int, no_cache: bool) -> list[dict]:
    model = create_transformer(config_name, vocab_size, max_length=max(max(lengths),
                                                                      source_length),
                               dropout_rate=0.0)
    inputs = jnp.asarray(np.random.default_rng(0).integers(2, vocab_size,
                                                           (batch_size, source_length)),
                         jnp.int32)
    params = model.init(jax.random.key(0), inputs, inputs[:, :8])["params"]
    rows = []
    for strategy in strategies:
        variants = [("cache", functools.partial(cached_decoder, model, strategy))]
        if no_cache and strategy == "greedy":
            variants.append(("no cache", functools.partial(uncached_greedy, model)))
        for variant, make in variants:
            for length in lengths:
                run = make(length)
                seconds = time_call(functools.partial(run, params, inputs), repeats)
                tokens = batch_size * length
                rows.append({"config": config_name, "strategy": strategy, "variant": variant,
                             "length": length, "seconds": seconds,
                             "tokens_per_sec": tokens / seconds,
                             "ms_per_token_step": 1000 * seconds / length})
    return rows


def scaling_ratios(rows: list[dict]) -> list[dict]:
    """Per (config, strategy, variant): per-step time at the longest / shortest length."""
    out = []
    keys = sorted({(r["config"], r["strategy"], r["variant"]) for r in rows})
    for key in keys:
        group = sorted((r for r in rows if (r["config"], r["strategy"], r["variant"]) == key),
                       key=lambda r: r["length"])
        out.append({"config": key[0], "strategy": key[1], "variant": key[2],
                    "lengths": f"{group[0]['length']}->{group[-1]['length']}",
                    "per_step_time_ratio": group[-1]["ms_per_token_step"]
                    / group[0]["ms_per_token_step"]})
    return out


def main(argv):
    del argv
    lengths = [int(x) for x in FLAGS.lengths]
    rows = []
    for config_name in FLAGS.configs:
        rows += benchmark(config_name, lengths, FLAGS.strategies, FLAGS.batch_size,
                          FLAGS.source_length, FLAGS.vocab_size, FLAGS.repeats, FLAGS.no_cache)
    ratios = scaling_ratios(rows)
    print(table(rows, ["config", "strategy", "variant", "length", "tokens_per_sec",
                       "ms_per_token_step"]))
    print()
    print(table(ratios, ["config", "strategy", "variant", "lengths", "per_step_time_ratio"]))
    # The decoders are jitted without compiler options: XLA's defaults, not the launcher's.
    write_json(FLAGS.out, {"environment": environment(compiler_options={}),
                           "batch_size": FLAGS.batch_size,
                           "source_length": FLAGS.source_length, "results": rows,
                           "scaling": ratios,
                           "command_flags": {k: getattr(FLAGS, k) for k in (
                               "configs", "lengths", "strategies", "batch_size",
                               "source_length", "vocab_size", "repeats", "no_cache")}})


if __name__ == "__main__":
    host_memory.reexec_with_huge_pages()
    app.run(main)
