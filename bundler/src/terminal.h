// Text from a database or a server made safe for a terminal.
#pragma once

#include <string>

namespace airlock::bundler {

// C0 and C1 controls, bidirectional overrides and bytes that are not UTF-8
// become '?'; everything else is kept.
std::string shown(const std::string& s);

// The same for text of several lines (an answer): line feeds and tabs are
// kept, CR LF becomes LF, a lone CR becomes '?'.
std::string shown_text(const std::string& s);

// The same on one line (a snippet of a document): every run of ASCII
// whitespace, line breaks included, becomes one space first.
std::string one_line(const std::string& s);

}  // namespace airlock::bundler
