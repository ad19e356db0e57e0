import * as winston from 'winston';

/**
 * The daemon's logger: plain lines on stderr (systemd's journal adds its own timestamps for the
 * foreground daemon; the auto-started daemon's stderr goes to <run>/daemon.log). Level from
 * UBLK_DM_LOG_LEVEL, default info.
 */
export type Logger = winston.Logger;

export function createLogger(level: string = process.env.UBLK_DM_LOG_LEVEL || 'info'): Logger {
  return winston.createLogger({
    level,
    format: winston.format.combine(
      winston.format.timestamp(),
      winston.format.printf(({ timestamp, level: lvl, message }) => `${timestamp} ${lvl}: ${message}`),
    ),
    transports: [new winston.transports.Console({ stderrLevels: Object.keys(winston.config.npm.levels) })],
  });
}

/** A logger that drops everything, for tests and library use. */
export function silentLogger(): Logger {
  return winston.createLogger({ silent: true, transports: [new winston.transports.Console({ silent: true })] });
}
