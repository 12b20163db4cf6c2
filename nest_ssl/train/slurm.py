"""SLURM as a launcher: the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, ...) of a process that `srun`
started, from the variables SLURM gives each task.

`srun` starts every process of a run itself (one task per device, on every node of the step), so the processes
need no torchrun: rank = SLURM_PROCID, world size = the step's task count, local rank = SLURM_LOCALID, node rank
= SLURM_NODEID, and the rendezvous is the first host of the step's node list at a port derived from the job id
(the same on every node without any communication). Variables already set win: a torchrun started by srun on each
node sets its own for its workers, and MASTER_ADDR / MASTER_PORT exported in the job script override the derived
ones.

Only a task of an srun with more than one task is taken for a launched process: the batch script itself (sbatch)
also has SLURM_PROCID=0 and SLURM_NTASKS=N, but it is one process (SLURM_STEP_NUM_TASKS is what srun adds), and the
single task of `srun --pty bash` or `srun -n1 nest-ssl train trainer.devices=8` is one process that starts its
devices' processes itself. Such processes train as they would outside SLURM.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, MutableMapping

from nest_ssl.config import ConfigError

# The variable that marks a process whose torchrun environment came from SLURM (for messages).
FROM_SLURM_ENV = "NEST_SSL_FROM_SLURM"
# Derived rendezvous ports lie in [PORT_BASE, PORT_BASE + PORT_SPAN): below Linux's ephemeral range (32768-60999),
# so an outgoing connection of another program does not hold the port by chance.
PORT_BASE = 15000
PORT_SPAN = 15000

_TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def expand_nodelist(text: str) -> list[str]:
    """SLURM's compressed host list: `node[01-04,7],gpu3,rack[1-2]-n[1-2]` -> every host name, in order (zero
    padding kept as written: `node[08-10]` -> node08, node09, node10)."""
    text = text.strip()
    if not text:
        raise ConfigError("the SLURM node list is empty (SLURM_STEP_NODELIST / SLURM_JOB_NODELIST)")
    hosts: list[str] = []
    for item in _split_top_level(text, text):
        hosts.extend(_expand_item(item, text))
    return hosts


def _split_top_level(text: str, whole: str) -> list[str]:
    """Splits at the commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
            if depth > 1:
                raise ConfigError(f"SLURM node list {whole!r}: nested brackets")
        elif c == "]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"SLURM node list {whole!r}: ']' without '['")
        elif c == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ConfigError(f"SLURM node list {whole!r}: '[' without ']'")
    items.append(text[start:])
    if any(not item for item in items):
        raise ConfigError(f"SLURM node list {whole!r}: an empty host name")
    return items


def _expand_item(item: str, whole: str) -> list[str]:
    """One host expression, with any number of bracket groups (their product)."""
    m = re.search(r"\[([^\]]*)\]", item)
    if m is None:
        return [item]
    head, tail = item[: m.start()], item[m.end() :]
    out = []
    for middle in _expand_range_list(m.group(1), whole):
        out.extend(head + middle + rest for rest in _expand_item(tail, whole))
    return out


def _expand_range_list(body: str, whole: str) -> list[str]:
    out = []
    for part in body.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if m is None:
            raise ConfigError(f"SLURM node list {whole!r}: {part!r} is not a number or a range N-M")
        lo, hi = m.group(1), m.group(2)
        if hi is None:
            out.append(lo)
            continue
        if int(hi) < int(lo):
            raise ConfigError(f"SLURM node list {whole!r}: the range {part!r} runs backwards")
        width = len(lo)
        out.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return out


def expand_tasks_per_node(text: str) -> list[int]:
    """SLURM_TASKS_PER_NODE's form: `2(x3),1` -> [2, 2, 2, 1]."""
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m is None:
            raise ConfigError(f"SLURM tasks per node {text!r}: {part!r} is not N or N(xM)")
        out.extend([int(m.group(1))] * int(m.group(2) or 1))
    return out


def master_port_for_job(job_id: str, step_id: str | None = None) -> int:
    """The rendezvous port every task of a job step computes alike: from the job id (and the step id, so that two
    steps of one job running at once do not meet at one port). A requeued job keeps its id, hence its port."""
    digits = re.sub(r"\D", "", job_id)  # array jobs: 1234_5 -> 12345
    if not digits:
        raise ConfigError(f"SLURM_JOB_ID={job_id!r} is not a job number; set MASTER_PORT")
    step = int(step_id) if step_id is not None and step_id.isdigit() else 0
    return PORT_BASE + (int(digits) * 16 + step) % PORT_SPAN


def is_srun_task(env: Mapping[str, str]) -> bool:
    """A process that srun started as one task of a job step (not the batch script, which has no step)."""
    return "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env


def _int(env: Mapping[str, str], key: str) -> int:
    value = env.get(key, "")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"SLURM's {key}={value!r} is not an integer") from None


def slurm_launch_env(env: Mapping[str, str]) -> dict[str, str]:
    """The torchrun variables of this srun task, from SLURM's; {} when this process is no srun task, or the only
    task of its step (it starts its own processes, if any, as on any machine)."""
    if not is_srun_task(env):
        return {}
    world = _int(env, "SLURM_STEP_NUM_TASKS")
    if world == 1:
        return {}
    rank = _int(env, "SLURM_PROCID")
    local_rank = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
    node_rank = _int(env, "SLURM_NODEID") if "SLURM_NODEID" in env else 0
    per_node_text = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if per_node_text:
        per_node = expand_tasks_per_node(per_node_text)
        local_world = per_node[node_rank] if node_rank < len(per_node) else per_node[-1]
    elif "SLURM_NTASKS_PER_NODE" in env:
        local_world = _int(env, "SLURM_NTASKS_PER_NODE")
    else:
        nodes = _int(env, "SLURM_STEP_NUM_NODES") if "SLURM_STEP_NUM_NODES" in env else _int(env, "SLURM_NNODES")
        local_world = max(1, world // max(1, nodes))
    out = {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(local_world),
        "GROUP_RANK": str(node_rank),
    }
    if "MASTER_ADDR" not in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise ConfigError("srun task without a node list (SLURM_STEP_NODELIST / SLURM_JOB_NODELIST); "
                              "set MASTER_ADDR to the host of task 0")
        out["MASTER_ADDR"] = expand_nodelist(nodelist)[0]  # task 0 runs on the step's first node
    if "MASTER_PORT" not in env:
        if "SLURM_JOB_ID" not in env:
            raise ConfigError("srun task without SLURM_JOB_ID: set MASTER_PORT")
        out["MASTER_PORT"] = str(master_port_for_job(env["SLURM_JOB_ID"], env.get("SLURM_STEP_ID")))
    return out


def adopt_slurm_env(env: MutableMapping[str, str] | None = None) -> bool:
    """Under srun without torchrun's variables: sets them (see slurm_launch_env) in `env` (os.environ by default)
    and returns True. A process that already has RANK, WORLD_SIZE and LOCAL_RANK (torchrun's workers, our own
    started processes) or is no srun task is left as it is."""
    env = os.environ if env is None else env
    if all(k in env for k in _TORCHRUN_KEYS):
        return env.get(FROM_SLURM_ENV) == "1"
    values = slurm_launch_env(env)
    if not values:
        return False
    for key, value in values.items():
        env.setdefault(key, value)
    env[FROM_SLURM_ENV] = "1"
    return True


def from_slurm(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process's torchrun variables came from SLURM (adopt_slurm_env)."""
    env = os.environ if env is None else env
    return env.get(FROM_SLURM_ENV) == "1"
