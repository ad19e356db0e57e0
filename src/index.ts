// Public library surface; later modules add their exports here.
export * from './base/units';
export * from './base/errno';
export * from './io/block-device';
export * from './dm/target';
export * from './dmio';
export * from './kcopyd';
