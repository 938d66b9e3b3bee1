#include "check.hpp"

TEST_CASE("placeholder") { CHECK(true); }

TEST_MAIN()
