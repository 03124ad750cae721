#pragma once
// A trace must be self-contained: everything it holds is read from its own file. HDF5 can
// redirect a link or a dataset's bytes elsewhere (external links, external raw storage, virtual
// datasets) and can hide data before its superblock (a user block); a trace doing any of that
// would be replayed on another file's data (or stall on a fifo), so it is refused. Soft links,
// which stay inside the file, are allowed.
#include <hdf5.h>

#include <string>

namespace kvsim {

struct ForeignStorage {
  std::string field;  // the offending object ("/layers/4") or "@userblock"; empty when none
  std::string what;
};

// The first thing in the open file that points outside it (field empty when there is none).
// Reads metadata only and follows no link out of the file. Takes no lock: it also runs in the
// preflight's forked child, where library_mutex() may look held by the parent's thread.
ForeignStorage foreign_storage(hid_t file);

}  // namespace kvsim
