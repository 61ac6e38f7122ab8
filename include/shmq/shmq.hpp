// The whole of shmq: #include <shmq/shmq.hpp>.
#pragma once

#include "shmq/codec.hpp"
#include "shmq/errors.hpp"
#include "shmq/inspect.hpp"
#include "shmq/joinable_queue.hpp"
#include "shmq/lease.hpp"
#include "shmq/manager.hpp"
#include "shmq/pool.hpp"
#include "shmq/process.hpp"
#include "shmq/queue.hpp"
#include "shmq/queue_options.hpp"
#include "shmq/simple_queue.hpp"
#include "shmq/stats.hpp"
