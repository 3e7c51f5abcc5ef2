"""The face-pretraining population: separate from the study, deterministic, labelled like AffectNet."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mambava.data.population import (
    DRAWN,
    POPULATION_STREAM,
    PopulationSpec,
    build_population,
    draw_person,
    load_population,
    population,
    save_population,
    split_people,
)

SPEC = PopulationSpec(seed=5, n_people=6, clip_frames=3, clip_seconds=4.0, image_size=48)


def test_same_arrays_for_any_number_of_workers_and_for_a_subset():
    one = build_population(SPEC, workers=1, progress=False)
    two = build_population(SPEC, workers=2, progress=False)
    for k in ("images", "labels", "drawn", "person"):
        np.testing.assert_array_equal(getattr(one, k), getattr(two, k))
    sub = build_population(SPEC, workers=1, progress=False, people=[4, 1])
    np.testing.assert_array_equal(sub.person, [4, 4, 4, 1, 1, 1])
    np.testing.assert_array_equal(sub.images[:3], one.images[12:15])
    np.testing.assert_array_equal(sub.images[3:], one.images[3:6])


def test_labels_are_the_latent_of_the_frame_with_annotation_noise():
    out = draw_person(PopulationSpec(seed=1, n_people=1, clip_frames=40, clip_seconds=10.0, image_size=32), 0)
    # Redraw the person's stream by hand: identity, latent, track, renderer seed, times, then the noise.
    from mambava.data.population import person_rng
    from mambava.data.render import expression_track, sample_identity
    from mambava.data.synthetic import latent_trajectories

    rng = person_rng(1, 0)
    sample_identity(rng)
    latent = latent_trajectories(rng, 300, 30.0)
    track = expression_track(rng, latent, 30.0)
    rng.integers(2**31)
    times = np.sort(rng.choice(300, size=40, replace=False))
    noise = out["labels"] - latent[times]
    assert np.abs(noise).max() < 0.3 and 0.02 < noise.std() < 0.08  # sd 0.05, rounded to 4 decimals
    np.testing.assert_allclose(out["drawn"], np.stack([track[k][times] for k in DRAWN], 1), atol=1e-6)
    assert out["images"].shape == (40, 32, 32, 3) and out["images"].dtype == np.uint8


def test_no_identity_or_seed_stream_is_shared_with_the_study(tmp_path):
    """The study draws from default_rng([seed, 0]), ([seed, 1, video]) and ([seed, 2, pair]); the
    population from ([seed, POPULATION_STREAM, person]). Equal seeds must still give other people."""
    from mambava.config import load_config
    from mambava.data.render import sample_identity

    cfg = load_config("params.yaml")
    study_seed, pop_seed = cfg.data.synthetic.seed, cfg.face_pretrain.population.seed
    assert POPULATION_STREAM not in (0, 1, 2)
    n_study = cfg.data.synthetic.n_videos
    study = {json.dumps(sample_identity(np.random.default_rng([study_seed, 1, i])).__dict__) for i in range(n_study)}
    for seed in (pop_seed, study_seed):  # the configured seed, and even the study's own seed
        spec = PopulationSpec(seed=seed, n_people=n_study, clip_frames=1, clip_seconds=1.0, image_size=16)
        people = {json.dumps(sample_identity(np.random.default_rng([seed, POPULATION_STREAM, p])).__dict__)
                  for p in range(spec.n_people)}
        assert not study & people
        # and the first draws of the streams differ
        a = np.random.default_rng([seed, POPULATION_STREAM, 3]).random(8)
        b = np.random.default_rng([study_seed, 1, 3]).random(8)
        assert not np.allclose(a, b)


def test_cache_roundtrip_and_spec_check(tmp_path):
    pop = build_population(SPEC, progress=False)
    path = tmp_path / "pop.npz"
    save_population(pop, path, SPEC)
    back = load_population(path, SPEC)
    np.testing.assert_array_equal(back.images, pop.images)
    assert load_population(path, PopulationSpec(seed=6, n_people=6, clip_frames=3, clip_seconds=4.0, image_size=48)) is None
    again = population(SPEC, path)
    np.testing.assert_array_equal(again.labels, pop.labels)


def test_split_people_is_seeded_and_disjoint():
    tr, out = split_people(100, 0.1, 0)
    assert len(out) == 10 and len(tr) == 90 and not set(tr) & set(out)
    tr2, out2 = split_people(100, 0.1, 0)
    np.testing.assert_array_equal(out, out2)
    with pytest.raises(ValueError):
        build_population(SPEC, people=[6])
