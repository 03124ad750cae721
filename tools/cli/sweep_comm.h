#pragma once
// Which SweepComm `kvsim sweep` uses: one process in the kvsim binary; kvsim-mpi installs its MPI
// communicator at start-up (tools/cli-mpi).
#include <functional>
#include <memory>

#include "sweep/sweep.h"

namespace kvsim::cli {

using SweepCommFactory = std::function<std::unique_ptr<SweepComm>()>;
// The factory in use; kvsim-mpi replaces it before running the command.
SweepCommFactory& sweep_comm_factory();
std::unique_ptr<SweepComm> make_sweep_comm();
// OpenMP threads per process when the user gives none: the cores divided by the processes MPI
// started on this node (OMPI_COMM_WORLD_LOCAL_SIZE / SLURM_NTASKS_PER_NODE), else 0 (OpenMP's).
int default_threads_per_rank(const SweepComm& comm);

}  // namespace kvsim::cli
