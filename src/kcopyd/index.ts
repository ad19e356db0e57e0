// kcopyd: copy one region to up to 8 destinations, split into parallel sub-jobs (see client.ts).
export {
  DEFAULT_SUB_JOB_SECTORS, KCOPYD_IGNORE_ERROR, KCOPYD_MAX_REGIONS, KCOPYD_WRITE_SEQ, MAX_SUB_JOB_SECTORS, SPLIT_COUNT,
} from './constants';
export {
  KcopydClient, dmKcopydClientCreate, kcopydClientCreate,
  type KcopydClientOptions, type KcopydProgress, type KcopydResult,
} from './client';
export type { KcopydNotify, KcopydPreparedCallback } from './job';
export {
  ACCOUNT_INTERVAL_MS, KcopydThrottle, THROTTLE_MAX_SLEEPS, THROTTLE_SLEEP_MS, realClock, type ThrottleClock,
} from './throttle';
