"""Data-parallel training on the engines Keras already has, per backend.

TensorFlow: `tf.distribute` (MultiWorkerMirroredStrategy for a cluster from
`TF_CONFIG` or SLURM, MirroredStrategy on several GPUs, TPUStrategy). JAX:
`keras.distribution.DataParallel` over every device of every process, joined
by `keras.distribution.initialize`. PyTorch: one device. Plus the two
workarounds Keras 3 needs for a multi-worker TensorFlow run to equal a
single-device one (`multi_worker_strategy`, `AdamW`), the chief rule for who
writes files, and the measured `jit_compile` default per backend.
"""

import contextlib
import json
import os
import sys

import keras
import numpy as np


def _tf_replicas():
    """Replicas in sync of the current tf.distribute replica context (1 outside one)."""
    tf = sys.modules.get("tensorflow")
    if tf is None or keras.backend.backend() != "tensorflow":
        return 1
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


@keras.saving.register_keras_serializable(package="keras_sepvit")
class AdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` whose gradient clipping sees the whole batch under tf.distribute.

    Keras 3 (TensorFlow backend) clips each replica's share of the gradient
    before the all-reduce, so `global_clipnorm` acts on the norm of a partial
    gradient and a run on N replicas differs from one on a single device.
    This class clips after the all-reduce, so every replica count gives the
    same update; outside a multi-replica strategy it is `AdamW` exactly.
    `make_optimizer` returns it only inside such a strategy.
    """

    def _clip_gradients(self, grads):
        if _tf_replicas() > 1:
            return grads  # clipped after the all-reduce, in _backend_update_step
        return super()._clip_gradients(grads)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if _tf_replicas() == 1:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        import tensorflow as tf

        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        reduced = self._all_reduce_sum_gradients(list(zip(grads, variables)))
        clipped = super()._clip_gradients([g for g, _ in reduced])
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step,
            self._distribution_strategy,
            list(zip(clipped, [v for _, v in reduced])),
            learning_rate,
        )


def multi_worker_strategy(cluster_resolver=None):
    """`tf.distribute.MultiWorkerMirroredStrategy` that works under Keras 3's `fit`.

    Keras 3 (keras-team/keras#20585) calls `strategy.reduce` on a nested
    batch (x, y) and with `axis=0` on scalar metrics, which this strategy
    refuses when there are several workers; here `reduce` takes each tensor of
    the structure on its own and reduces scalars over replicas.
    """
    import tensorflow as tf

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            def one(v):
                rank = self.experimental_local_results(v)[0].shape.rank
                return super(MultiWorkerMirroredStrategy, self).reduce(
                    reduce_op, v, None if rank == 0 else axis
                )

            return tf.nest.map_structure(one, value)

    return MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver)


def cluster_resolver():
    """The TensorFlow cluster this process belongs to, or None on a single machine.

    `TF_CONFIG` with several tasks, or a SLURM job with several tasks
    (`SLURM_NTASKS` > 1, read by `SlurmClusterResolver`).
    """
    import tensorflow as tf

    resolvers = tf.distribute.cluster_resolver
    if os.environ.get("TF_CONFIG"):
        try:
            config = json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as e:
            raise ValueError(
                f"TF_CONFIG is not JSON ({e}). Received: TF_CONFIG={os.environ['TF_CONFIG']!r}"
            ) from e
        tasks = sum(len(v) for v in config.get("cluster", {}).values())
        return resolvers.TFConfigClusterResolver() if tasks > 1 else None
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return resolvers.SlurmClusterResolver()
    return None


def is_chief(strategy=None):
    """Whether this process writes the run's files.

    TensorFlow: the "chief" task, else worker 0 (the Keras/TF convention);
    JAX: process 0; a single process always.
    """
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index() == 0
    tf = sys.modules.get("tensorflow")
    if keras.backend.backend() != "tensorflow" or tf is None:
        return True
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None) or cluster_resolver()
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    cluster = resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def distribution_strategy(tpu=None, cluster=None):
    """TPUStrategy with `tpu` ("" or "local" for a local TPU VM), MultiWorkerMirroredStrategy
    in a cluster (`cluster`, a cluster resolver, or the one `cluster_resolver()` finds),
    MirroredStrategy with several GPUs, else the default strategy. TensorFlow backend."""
    import tensorflow as tf

    if tpu is not None:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu="" if tpu == "local" else tpu
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    cluster = cluster or cluster_resolver()
    if cluster is not None:
        return multi_worker_strategy(cluster)
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def initialize_multi_host(coordinator=None, num_processes=None, process_id=None):
    """Joins the processes of a multi-host JAX run (`keras.distribution.initialize`).

    Call it before anything touches a device, on every host, with the same
    `coordinator` ("host:port" of process 0) and `num_processes`, and this
    host's `process_id`. Left as None, they come from the environment
    (KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID) or, on
    Cloud TPU and SLURM, from JAX's own detection. On the CPU, JAX joins
    processes over Gloo (what the tests use).
    """
    if keras.backend.backend() != "jax":
        raise ValueError(
            "Multi-host training with keras.distribution needs the JAX backend; on TensorFlow "
            "set TF_CONFIG (MultiWorkerMirroredStrategy). Received: "
            f"backend={keras.backend.backend()!r}"
        )
    if num_processes is not None and not 0 <= (process_id or 0) < num_processes:
        raise ValueError(
            f"`process_id` must be in [0, {num_processes}). Received: process_id={process_id}"
        )
    keras.distribution.initialize(coordinator, num_processes, process_id)


def distribution_scope(tpu=None):
    """Sets up data-parallel training for the backend; returns the scope to build in.

    TensorFlow: `distribution_strategy(tpu).scope()`. JAX: the global
    `keras.distribution.DataParallel` over every device of every process
    (the batch is split over devices and, through `tf.data` rebatch + shard,
    over processes), and a null scope. For the large variants, the same place
    takes `keras.distribution.ModelParallel` with a `LayoutMap` instead (the
    README shows one). PyTorch: one device (Keras has no multi-device
    training loop for it), a null scope.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return distribution_strategy(tpu).scope()
    if tpu is not None and tpu != "local":
        raise ValueError(
            "`tpu` names a TPU for the TensorFlow backend; under JAX the TPU VM's chips are "
            f"local devices and are used without it. Received: tpu={tpu!r}, backend={backend!r}"
        )
    if backend == "jax":
        devices = keras.distribution.list_devices()
        if len(devices) > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return contextlib.nullcontext()


def replicas():
    """How many replicas share the global batch (devices, over all processes)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.distribute.get_strategy().num_replicas_in_sync
    if backend == "jax":
        distribution = keras.distribution.distribution()
        return 1 if distribution is None else int(np.prod(distribution.device_mesh.shape))
    return 1


# Measured with benchmarks/train_step.py (README, "Training on many GPUs"): JAX
# without jit runs op by op, tens of times slower; torch.compile costs minutes
# of compilation for a small gain on the CPU and needs a C++ toolchain.
JIT_COMPILE = {"jax": True, "tensorflow": False, "torch": False}


def default_jit_compile(backend=None):
    """The measured default of `jit_compile` for `backend` (the current one by default)."""
    backend = backend or keras.backend.backend()
    if backend not in JIT_COMPILE:
        raise ValueError(
            f"Unknown backend: expected one of {sorted(JIT_COMPILE)}. Received: backend={backend!r}"
        )
    return JIT_COMPILE[backend]


def shard_by(dataset, policy="data"):
    """Sets how a multi-worker TensorFlow run splits `dataset` between workers.

    "data": every worker reads everything and keeps its part of each global
    batch (in-memory arrays, image folders: one file list); "file": workers
    read different files (tfds TFRecord shards, when there are at least as
    many files as workers); "auto": file, else data.
    """
    import tensorflow as tf

    policies = {
        "data": tf.data.experimental.AutoShardPolicy.DATA,
        "file": tf.data.experimental.AutoShardPolicy.FILE,
        "auto": tf.data.experimental.AutoShardPolicy.AUTO,
    }
    if policy not in policies:
        raise ValueError(f"`policy` must be one of {sorted(policies)}. Received: policy={policy!r}")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policies[policy]
    return dataset.with_options(options)
