// Placeholder: filled in by the issue 11 work.
#include <catch2/catch.hpp>
