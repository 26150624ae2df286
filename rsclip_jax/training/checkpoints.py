"""Orbax checkpoints holding the train state and what the run was (rsclip_jax/training/resume.py) in one step
directory. The data's position needs no state of its own: global batch s follows step s (data/pipeline.py)."""

import os

import jax
import orbax.checkpoint as ocp
from etils import epath


def _absolute(directory: str) -> epath.Path:
    """Orbax wants absolute paths; a bucket (gs://...) is one already."""
    return epath.Path(directory if "://" in directory else os.path.abspath(directory))


class Checkpointer:
    """Async saves every `every_steps` steps into `directory`, keeping the last `keep`."""

    def __init__(self, directory: str, *, every_steps: int, keep: int):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every_steps, enable_async_checkpointing=True, create=True
        )
        self.directory = _absolute(directory)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, run: dict | None = None, *, force: bool = False) -> bool:
        """Saves when the interval says so (or `force`); returns whether it did. Device arrays are
        copied out before this returns, so the caller may donate `state` to the next step. `run`: the
        JSON description a resume is checked against (none for imported weights)."""
        items = {"state": ocp.args.StandardSave(state)}
        if run is not None:
            items["run"] = ocp.args.JsonSave(run)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def saved_run(self, step: int) -> dict | None:
        """The run description saved with `step`, or None where it has none."""
        if not (self.directory / str(step) / "run").exists():
            return None
        return self.manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore())).run

    def restore(self, step: int, setup):
        """The state of `step` placed in `setup`'s shardings (any mesh)."""
        items = {"state": ocp.args.StandardRestore(setup.state_target())}
        return self.manager.restore(step, args=ocp.args.Composite(**items)).state

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def restore_params(directory: str, setup, step: int | None = None) -> tuple[int, dict]:
    """(step, parameters) of checkpoint `step` in `directory` (default: the latest), in `setup`'s shardings. Only
    the `params` subtree is read, so the optimizer settings need not match the run's. A folder without checkpoints
    raises FileNotFoundError, a checkpoint of another model ValueError, each naming it."""
    path = _absolute(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"{directory} does not exist: give the --workdir of a training run (or convert import)")
    manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False))
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory} holds no checkpoint")
        target = setup.state_target("params")
        restore_args = jax.tree.map(lambda leaf: ocp.ArrayRestoreArgs(sharding=leaf.sharding), target)
        item = ocp.args.PyTreeRestore(
            item={"params": target}, restore_args={"params": restore_args}, partial_restore=True
        )
        try:
            return step, manager.restore(step, args=ocp.args.Composite(state=item)).state["params"]
        except Exception as e:  # Orbax and TensorStore raise many types for a tree or shape mismatch
            raise ValueError(
                f"the checkpoint {directory}/{step} does not fit the config's model: give the config "
                f"it was trained with. Orbax said: {e}"
            ) from None
    finally:
        manager.close()
