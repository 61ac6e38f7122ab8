# Warnings and sanitizers for shmq's own targets only; never for the consumer's.
function(shmq_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wconversion
    -Wno-sign-conversion $<$<BOOL:${SHMQ_WERROR}>:-Werror>)
  if(SHMQ_SANITIZE_ADDRESS)
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined -fno-sanitize-recover=all
      -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
  if(SHMQ_SANITIZE_THREAD)
    # GCC warns that TSan does not model atomic_thread_fence. Ours is the Dekker hand-off between a
    # notifier and a futex sleeper; the ring's data is guarded by mutexes, which TSan does model.
    target_compile_options(${target} PRIVATE -fsanitize=thread -fno-omit-frame-pointer
      $<$<CXX_COMPILER_ID:GNU>:-Wno-tsan>)
    target_link_options(${target} PRIVATE -fsanitize=thread)
  endif()
endfunction()
