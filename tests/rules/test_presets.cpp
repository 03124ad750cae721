// kvpress presets expand to their specs anywhere in a spec, and an unknown one is a clear error.
#include <doctest/doctest.h>

#include "core/error.h"
#include "rules/factory.h"
#include "rules/presets.h"

using namespace kvsim;

TEST_CASE("presets: NAME@kvpress expands alone and inside wrappers; unknown names are listed") {
  CHECK(expand_presets("snapkv@kvpress") == "snapkv(window=64,kernel=5,pool=avg)");
  CHECK(expand_presets("critical(ada(snapkv@kvpress),alpha=0.5)") ==
        "critical(ada(snapkv(window=64,kernel=5,pool=avg)),alpha=0.5)");
  CHECK(expand_presets("tova;knorm@kvpress") == "tova;knorm");
  CHECK(make_rule("pyramid@kvpress")->spec() == make_rule("pyramid(snapkv(window=64,kernel=5,pool=avg),variant=float)")->spec());
  for (const Preset& p : kvpress_presets()) CHECK(make_rule(std::string(p.name))->spec() == make_rule(std::string(p.spec))->spec());
  CHECK_THROWS_WITH_AS(make_rule("snapkv@kvpres"), doctest::Contains("unknown preset 'snapkv@kvpres'"), Error);
}
