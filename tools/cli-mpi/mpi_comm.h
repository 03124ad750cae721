#pragma once
// SweepComm over MPI: the unit counter is one integer at rank 0 read-and-incremented with
// MPI_Fetch_and_op (passive one-sided access), so no rank waits for a dispatcher and rank 0
// computes units like the others.
#include <mpi.h>

#include "sweep/sweep.h"

namespace kvsim::cli {

class MpiComm : public SweepComm {
 public:
  MpiComm();  // MPI is initialised (MPI_Init_thread) by main
  ~MpiComm() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  long long next_unit() override;
  void barrier() override;
  void broadcast(std::string& text) override;
  std::vector<std::string> gather(const std::string& text) override;
  std::string host() const override;

 private:
  int rank_ = 0, size_ = 1;
  MPI_Win win_ = MPI_WIN_NULL;
  long long* counter_ = nullptr;
};

}  // namespace kvsim::cli
