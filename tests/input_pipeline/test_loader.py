"""grain loaders: checkpointable training iterator, host sharding, padded evaluation."""

import grain
import numpy as np
import pytest

from input_pipeline import get_source, make_eval_batches, make_train_loader, parse_preprocess


class RangeSource:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": np.array(i, np.int32)}


def test_resumed_iterator_yields_the_same_batches(digits_dir):
    source = get_source("digits", "train", digits_dir)
    loader = make_train_loader(source, global_batch_size=16, seed=3,
                               transforms=parse_preprocess("flip_lr|value_range(0,1)"))
    iterator = iter(loader)
    for _ in range(5):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(3)]
    restored = iter(loader)
    restored.set_state(state)
    for want in expected:
        got = next(restored)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_epochs_are_reshuffled_and_cover_everything():
    iterator = iter(make_train_loader(RangeSource(12), global_batch_size=4, seed=0))
    epochs = [np.concatenate([next(iterator)["x"] for _ in range(3)]) for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(12))
    assert not np.array_equal(epochs[0], epochs[1])


def test_epoch_order_is_a_function_of_seed_and_index_only():
    """EpochShuffle: any access order (prefetch threads, a restored iterator) sees the same
    sequence; seeds give different sequences; a bad seed is refused."""
    import grain

    from input_pipeline.loader import EpochShuffle

    def shuffled(seed):
        return EpochShuffle(grain.MapDataset.source(RangeSource(10)), seed)

    forward = [int(shuffled(3)[i]["x"]) for i in range(40)]
    backward = shuffled(3)
    assert [int(backward[i]["x"]) for i in reversed(range(40))][::-1] == forward
    assert all(sorted(forward[e * 10:(e + 1) * 10]) == list(range(10)) for e in range(4))
    assert forward != [int(shuffled(4)[i]["x"]) for i in range(40)]
    with pytest.raises(ValueError, match="seed=-1"):
        shuffled(-1)


class _AddNoise(grain.transforms.RandomMap):
    def random_map(self, example, rng):
        return {**example, "noise": np.float32(rng.random())}


@pytest.mark.parametrize("hosts", [1, 2])
def test_repeated_augmentation_gives_each_image_three_differently_augmented_copies(hosts):
    """DeiT's RASampler: an epoch of 12 is 4 images of the epoch's permutation, each 3 times
    in a row (in one batch of 6 here), each copy with its own random draw; the next epoch
    draws other images. The same on 1 host as on 2."""
    batches = []
    for host in range(hosts):
        iterator = iter(make_train_loader(RangeSource(12), global_batch_size=6, seed=1,
                                          transforms=[_AddNoise()], aug_repeats=3,
                                          process_index=host, process_count=hosts))
        batches.append([next(iterator) for _ in range(4)])
    images = np.concatenate([np.concatenate([b[i]["x"] for b in batches])
                             for i in range(4)])  # hosts' slices of each global batch
    noise = np.concatenate([np.concatenate([b[i]["noise"] for b in batches])
                            for i in range(4)])
    copies = images.reshape(8, 3)
    assert (copies == copies[:, :1]).all(), copies  # each image three times in a row
    epochs = copies[:, 0].reshape(2, 4)
    assert all(len(set(epoch)) == 4 for epoch in epochs)  # 4 distinct images per epoch
    assert set(epochs[0]) != set(epochs[1])
    assert len(set(noise.tolist())) == 24  # every copy augmented on its own
    plain = iter(make_train_loader(RangeSource(12), global_batch_size=6, seed=1, aug_repeats=0))
    assert sorted(np.concatenate([next(plain)["x"] for _ in range(2)])) == list(range(12))


def test_hosts_read_disjoint_shards_covering_the_data():
    seen = []
    for host in range(3):
        iterator = iter(make_train_loader(RangeSource(30), global_batch_size=6, seed=1,
                                          process_index=host, process_count=3))
        seen.append(set(np.concatenate([next(iterator)["x"] for _ in range(5)]).tolist()))
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert set.union(*seen) == set(range(30))


@pytest.mark.parametrize("hosts", [1, 2, 3])
def test_eval_batches_cover_every_example_once(hosts):
    covered, counts = [], []
    for host in range(hosts):
        batches = list(make_eval_batches(RangeSource(23), global_batch_size=4 * hosts,
                                         process_index=host, process_count=hosts))
        counts.append(len(batches))
        for batch in batches:
            assert batch["x"].shape == (4,) and batch["mask"].shape == (4,)
            covered.extend(batch["x"][batch["mask"] > 0].tolist())
    assert len(set(counts)) == 1  # every host runs the same number of eval steps
    assert sorted(covered) == list(range(23))


def test_uneven_eval_shards_run_as_many_batches_as_the_largest():
    """25 examples on 3 hosts are shards of 9, 8 and 8: with 4 per host, the host of 9 needs
    a third batch, and the others run a third, fully masked one with it (sizing the passes
    by the smaller shards would drop its ninth example)."""
    covered = []
    for host in range(3):
        batches = list(make_eval_batches(RangeSource(25), global_batch_size=12,
                                         process_index=host, process_count=3))
        assert len(batches) == 3
        covered.extend(x for batch in batches for x in batch["x"][batch["mask"] > 0].tolist())
    assert sorted(covered) == list(range(25))


def test_batch_size_must_split_over_hosts():
    with pytest.raises(ValueError, match="batch_size=10 must be a positive multiple"):
        make_train_loader(RangeSource(30), global_batch_size=10, process_count=4)
    with pytest.raises(ValueError, match="fewer than one batch"):
        make_train_loader(RangeSource(3), global_batch_size=8)


def test_global_batches_do_not_depend_on_the_number_of_hosts():
    single = iter(make_train_loader(RangeSource(40), global_batch_size=8, seed=5,
                                    transforms=parse_preprocess("")))
    hosts = [iter(make_train_loader(RangeSource(40), global_batch_size=8, seed=5,
                                    process_index=h, process_count=2)) for h in range(2)]
    for _ in range(12):  # across epoch boundaries
        together = np.concatenate([next(h)["x"] for h in hosts])
        np.testing.assert_array_equal(together, next(single)["x"])


def test_random_augmentations_do_not_depend_on_the_number_of_hosts():
    """An example's random draw is seeded by its index in the global order alone: the
    global batches of 2 hosts hold the very draws of 1 host's (one process with 8 devices
    trains exactly like 2 processes with 4)."""
    single = iter(make_train_loader(RangeSource(16), global_batch_size=8, seed=5,
                                    transforms=[_AddNoise()]))
    hosts = [iter(make_train_loader(RangeSource(16), global_batch_size=8, seed=5,
                                    transforms=[_AddNoise()], process_index=h,
                                    process_count=2)) for h in range(2)]
    for _ in range(3):
        together = [next(h) for h in hosts]
        want = next(single)
        np.testing.assert_array_equal(np.concatenate([b["noise"] for b in together]),
                                      want["noise"])


def test_packing_keeps_every_token_with_segments_and_positions():
    from input_pipeline import Seq2SeqTaskSource

    source = Seq2SeqTaskSource("reverse", "train", num_examples=64, min_len=2, max_len=5,
                               vocab_size=12)
    iterator = iter(make_train_loader(source, global_batch_size=4, seed=0, pack_length=14))
    batch = next(iterator)
    assert batch["inputs"].shape == (4, 14)
    for key in ("inputs", "targets"):
        segments, positions = batch[f"{key}_segment_ids"], batch[f"{key}_positions"]
        assert segments.max() >= 2  # several examples per row
        np.testing.assert_array_equal(segments > 0, batch[key] > 0)
        for row in range(4):
            for segment in range(1, segments[row].max() + 1):
                where = segments[row] == segment
                np.testing.assert_array_equal(positions[row][where], np.arange(where.sum()))
    # Every packed example is a real reversal: its EOS-terminated target reverses its input.
    for row in range(4):
        for segment in range(1, batch["inputs_segment_ids"][row].max() + 1):
            source_tokens = batch["inputs"][row][batch["inputs_segment_ids"][row] == segment]
            target_tokens = batch["targets"][row][batch["targets_segment_ids"][row] == segment]
            np.testing.assert_array_equal(target_tokens[:-1], source_tokens[:-1][::-1])
    state = iterator.get_state()
    following = next(iterator)
    restored = iter(make_train_loader(source, global_batch_size=4, seed=0, pack_length=14))
    restored.set_state(state)
    np.testing.assert_array_equal(next(restored)["targets"], following["targets"])


class _KeepEven(grain.transforms.Filter):
    def filter(self, example):
        return int(example["x"]) % 2 == 0


class _KeepNone(grain.transforms.Filter):
    def filter(self, example):
        return False


def test_filtered_training_batches_are_full_resumable_and_split_over_hosts():
    """A filter drops examples from training (seq2seq's overlong pairs): batches stay full,
    hold only kept examples, resume exactly, and each host reads its own examples."""
    def loader(host=0, hosts=1):
        return make_train_loader(RangeSource(40), global_batch_size=4, seed=0,
                                 transforms=[_KeepEven()], process_index=host,
                                 process_count=hosts)

    iterator = iter(loader())
    first = np.concatenate([next(iterator)["x"] for _ in range(5)])  # one epoch: 20 kept
    assert sorted(first.tolist()) == list(range(0, 40, 2))
    state = iterator.get_state()
    expected = [next(iterator)["x"] for _ in range(3)]
    restored = iter(loader())
    restored.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(restored)["x"], want)
    # Host h keeps what the filter keeps of its own stride of the global order (within an
    # epoch the strides are disjoint): it reads and tokenises no other host's examples.
    from input_pipeline.loader import EpochShuffle

    order = EpochShuffle(grain.MapDataset.source(RangeSource(40)), 0)
    order = [int(order[i]["x"]) for i in range(80)]
    for host in range(2):
        host_iterator = iter(loader(host, 2))
        batches = [next(host_iterator)["x"] for _ in range(5)]
        assert all(b.shape == (2,) for b in batches)
        expected = [x for x in order[host::2] if x % 2 == 0][:10]
        np.testing.assert_array_equal(np.concatenate(batches), expected)


def test_a_filter_is_refused_in_evaluation_and_one_keeping_nothing_raises():
    with pytest.raises(ValueError, match="evaluation keeps every example.*_KeepEven"):
        next(make_eval_batches(RangeSource(8), global_batch_size=4, transforms=[_KeepEven()]))
    # The stream is endless: a filter that rejects everything used to loop forever. It now
    # raises, naming the filter (grain's own message named a prefetch iterator).
    iterator = iter(make_train_loader(RangeSource(8), global_batch_size=4,
                                      transforms=[_KeepNone()]))
    with pytest.raises(ValueError, match="training filter .*_KeepNone.* rejected 1000 "
                                         "examples in a row"):
        next(iterator)


@pytest.mark.parametrize("pack_length", [None, 12])
def test_a_length_filter_keeping_nothing_names_the_setting_to_raise(pack_length):
    """seq2seq training with a max_length shorter than every pair: the error says which
    config field to raise, with or without packing."""
    from input_pipeline.text import DropLongerThan

    class Long:
        def __len__(self):
            return 50

        def __getitem__(self, i):  # 7 tokens ending with EOS (1), then padding
            return {"inputs": np.array([5, 6, 7, 8, 9, 4, 1, 0], np.int32),
                    "targets": np.array([3, 1, 0, 0, 0, 0, 0, 0], np.int32)}

    keep_short = DropLongerThan(6, setting="config.dataset.max_length")
    assert not keep_short.filter(Long()[0]) and DropLongerThan(7).filter(Long()[0])
    iterator = iter(make_train_loader(Long(), global_batch_size=2, transforms=[keep_short],
                                      pack_length=pack_length))
    with pytest.raises(ValueError, match=r"DropLongerThan\(max_length=6.*at most 6 tokens, EOS "
                                         r"included; raise config.dataset.max_length=6"):
        next(iterator)
    # A filter that keeps some examples is never stopped, however few it keeps.
    rare = iter(make_train_loader(RangeSource(2000), global_batch_size=2,
                                  transforms=[_KeepOneIn(700)]))
    assert all(int(x) % 700 == 0 for _ in range(3) for x in next(rare)["x"])


class _KeepOneIn(grain.transforms.Filter):
    def __init__(self, n):
        self.n = n

    def filter(self, example):
        return int(example["x"]) % self.n == 0


class ImageSource:
    """Images whose pixels and label are their index; module-level so workers can unpickle it."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": np.full((10, 10, 3), i, np.uint8), "label": np.int32(i)}


@pytest.fixture
def parsed_absl_flags():
    """grain's worker processes read absl flags, which trainer.main's absl.app parses."""
    from absl import flags

    if flags.FLAGS.is_parsed():
        yield
        return
    flags.FLAGS.mark_as_parsed()
    yield
    flags.FLAGS.unparse_flags()


def test_workers_without_parsed_flags_fail_before_starting():
    from absl import flags

    if flags.FLAGS.is_parsed():
        pytest.skip("absl flags were parsed by another test of this process")
    with pytest.raises(ValueError, match="worker_count=2 .*absl.app.run"):
        make_train_loader(ImageSource(24), global_batch_size=8, worker_count=2)


@pytest.mark.slow  # about 10 s: each worker process imports the pipeline
def test_worker_processes_yield_the_batches_of_the_main_process(parsed_absl_flags):
    """worker_count > 0 pickles the pipeline (EpochShuffle's lock included) into workers,
    and random augmentations stay seeded per example, so the batches do not change."""
    spec = "inception_crop(6,30,100)|flip_lr|value_range(-1,1)"
    batches = {}
    for workers in (0, 2):
        iterator = iter(make_train_loader(ImageSource(24), global_batch_size=8, seed=2,
                                          transforms=parse_preprocess(spec),
                                          worker_count=workers))
        batches[workers] = [next(iterator) for _ in range(4)]  # across an epoch boundary
        iterator.close()  # stops the worker processes now, not at interpreter exit
    for want, got in zip(batches[0], batches[2], strict=True):
        np.testing.assert_array_equal(got["label"], want["label"])
        np.testing.assert_array_equal(got["image"], want["image"])


def test_epoch_shuffle_pickles_without_its_lock_and_cache():
    import pickle

    import grain

    from input_pipeline.loader import EpochShuffle

    shuffled = EpochShuffle(grain.MapDataset.source(RangeSource(10)), 7)
    order = [int(shuffled[i]["x"]) for i in range(20)]  # fills the permutation cache
    copy = pickle.loads(pickle.dumps(shuffled))
    assert copy._permutations == {}
    assert [int(copy[i]["x"]) for i in range(20)] == order


class CountingSource(RangeSource):
    def __init__(self, n):
        super().__init__(n)
        self.reads = 0

    def __getitem__(self, i):
        self.reads += 1
        return super().__getitem__(i)


def test_loader_reads_only_a_few_batches_ahead():
    """The loader prefetches whole batches: grain's default read-ahead (500 elements) would
    hold 500 batches in host memory. Reads are polled until they pass the bound or a second
    has gone by, so a slow machine cannot make this pass wrongly."""
    import time

    source = CountingSource(100_000)
    iterator = iter(make_train_loader(source, global_batch_size=16, seed=0))
    next(iterator)
    bound = 8 * 16  # the batch taken and a few read ahead (READ_AHEAD_BATCHES = 4 now)
    deadline = time.monotonic() + 1.0
    while source.reads <= bound and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 16 <= source.reads <= bound
    iterator.close()
