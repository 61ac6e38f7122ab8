// The whole of shmq: #include <shmq/shmq.hpp>.
#pragma once

#include "shmq/codec.hpp"
#include "shmq/errors.hpp"
#include "shmq/queue.hpp"
#include "shmq/queue_options.hpp"
#include "shmq/stats.hpp"
#include "shmq/process.hpp"
