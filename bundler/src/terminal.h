// Text from a database or a server made safe for a terminal.
#pragma once

#include <string>

namespace airlock::bundler {

// C0 and C1 controls, bidirectional overrides and bytes that are not UTF-8
// become '?'; everything else is kept.
std::string shown(const std::string& s);

}  // namespace airlock::bundler
