# Compiles SOURCE with COMPILER (include directory INCLUDE); passes if the compile fails and the
# first line reporting an error contains EXPECTED.
execute_process(
  COMMAND ${COMPILER} -std=c++17 -fsyntax-only -I${INCLUDE} ${SOURCE}
  RESULT_VARIABLE status
  OUTPUT_VARIABLE output
  ERROR_VARIABLE output)
if(status EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but must not")
endif()
string(REGEX MATCH "error:[^\n]*" first_error "${output}")
string(FIND "${first_error}" "${EXPECTED}" found)
if(found EQUAL -1)
  message(FATAL_ERROR "the first error of ${SOURCE} is not the expected sentence:\n${first_error}")
endif()
