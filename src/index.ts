// Public library surface; later modules add their exports here.
export * from './units';
export * from './errno';
export * from './blockdev';
export * from './target';
export * from './dmio';
export * from './kcopyd';
