"""The scale-out routing policy and file shipping, without Ray: model affinity first, cached
sub-graphs second, least-loaded otherwise; shipped files never overwrite one another."""

from __future__ import annotations

from pathlib import Path

from nodegraph.cluster.engine_actor import model_files
from nodegraph.cluster.files import apply_renames, collect_files, place_files
from nodegraph.cluster.records import ActorState
from nodegraph.cluster.routing import JobNeeds, Waiting, ActorView, affinity, choose, model_names
from nodegraph.context import Paths
from nodegraph.registry import default_registry

from tests.cluster.cluster_nodes import TinyModelApply, TinyModelLoader


def state(index: int, files=(), keys=(), done=0) -> ActorState:
    return ActorState(f"a{index}", None, 1000 + index, frozenset(files), frozenset(keys), done)


def view(index: int, busy=False, alive=True, **kw) -> ActorView:
    return ActorView(index, alive, busy, state(index, **kw))


def needs(*names: str, sigs=()) -> JobNeeds:
    return JobNeeds(frozenset(names), frozenset(sigs))


def test_model_names_are_the_loader_inputs_of_a_prompt():
    registry = default_registry(packs=False)
    registry.register(TinyModelLoader)
    registry.register(TinyModelApply)
    prompt = {"1": {"class_type": "TinyModelLoader", "inputs": {"model_name": "a.safetensors"}},
              "2": {"class_type": "TinyModelApply", "inputs": {"model": ["1", 0], "x": 2.0}},
              "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd/x.safetensors"}},
              "4": {"class_type": "Nope", "inputs": {"name": "ignored.safetensors"}}}
    assert model_names(prompt, registry) == {"a.safetensors", "sd/x.safetensors"}


def test_model_files_come_from_the_model_manager_keys():
    loaded = [{"key": ("/m/tiny/a.safetensors", "tiny", 10, 5)},
              {"key": ("/m/checkpoints/sd", ("unet", "fp16"))}, {"key": "plain-name"}]
    assert model_files(loaded) == {"/m/tiny/a.safetensors", "/m/checkpoints/sd"}


def test_a_job_goes_to_the_actor_holding_its_model_even_when_it_did_more_work():
    actors = [view(0, done=0), view(1, files=["/m/tiny/a.safetensors"], done=9)]
    assert choose([Waiting("j", needs("a.safetensors"))], actors) == [("j", 1)]
    # a same-named file in another folder is a different suffix match only when the path ends so
    assert affinity(needs("tiny/a.safetensors"), actors[1].state) == (1, 0)
    assert affinity(needs("b/a.safetensors"), actors[1].state) == (0, 0)


def test_cached_sub_graphs_break_ties_then_least_loaded():
    actors = [view(0, keys=[b"x"], done=5), view(1, keys=[b"y", b"z"], done=5), view(2, done=0)]
    assert choose([Waiting("j", needs(sigs=[b"y", b"z"]))], actors) == [("j", 1)]
    assert choose([Waiting("j", needs(sigs=[b"q"]))], actors) == [("j", 2)]  # fewest jobs done


def test_independent_jobs_fill_every_idle_actor():
    actors = [view(0), view(1), view(2, busy=True)]
    jobs = [Waiting(f"j{i}", needs()) for i in range(5)]
    assert choose(jobs, actors) == [("j0", 0), ("j1", 1)]


def test_busy_holder_makes_the_job_wait_only_within_affinity_wait():
    actors = [view(0, busy=True, files=["/m/a.safetensors"]), view(1)]
    job = Waiting("j", needs("a.safetensors"), waited=1.0)
    assert choose([job], actors, affinity_wait=0.0) == [("j", 1)]  # default: parallelism first
    assert choose([job], actors, affinity_wait=5.0) == []  # waits for the holder...
    later = Waiting("k", needs("b.safetensors"))
    assert choose([job, later], actors, affinity_wait=5.0) == [("k", 1)]  # ...and lets others pass
    old = Waiting("j", needs("a.safetensors"), waited=6.0)
    assert choose([old], actors, affinity_wait=5.0) == [("j", 1)]


def test_dead_actors_get_nothing():
    actors = [view(0, alive=False, files=["/m/a.safetensors"]), view(1, busy=True)]
    assert choose([Waiting("j", needs("a.safetensors"))], actors) == []
    actors.append(view(2))
    assert choose([Waiting("j", needs("a.safetensors"))], actors) == [("j", 2)]


def test_shipped_files_are_renamed_on_collision_and_references_follow(tmp_path):
    actor = Paths.under(tmp_path / "actor")
    server = Paths.under(tmp_path / "server")
    for paths in (actor, server):
        Path(paths.output_dir, "sub").mkdir(parents=True)
    Path(actor.output_dir, "sub", "img_00001_.png").write_bytes(b"new")
    Path(server.output_dir, "sub", "img_00001_.png").write_bytes(b"other actor's")
    outputs = {"9": {"images": [{"filename": "img_00001_.png", "subfolder": "sub", "type": "output"}]}}
    files = collect_files(outputs, actor)
    assert [f.data for f in files] == [b"new"]
    assert not Path(actor.output_dir, "sub", "img_00001_.png").exists()  # the actor keeps no copy
    renames = place_files(files, server)
    apply_renames(renames, outputs)
    name = outputs["9"]["images"][0]["filename"]
    assert name == "img_00001_ (1).png"
    assert Path(server.output_dir, "sub", name).read_bytes() == b"new"
    assert Path(server.output_dir, "sub", "img_00001_.png").read_bytes() == b"other actor's"


def test_shipped_file_names_cannot_leave_the_output_folder(tmp_path):
    import pytest

    from nodegraph.cluster.records import ShippedFile

    with pytest.raises(ValueError):
        place_files([ShippedFile("output", "", "../escape.png", b"x")], Paths.under(tmp_path))
    assert not (tmp_path / "escape.png").exists()
