import { DmError } from '../base/errno';
import type { DeviceKey } from '../io/block-device';
import { IoRing } from '../io/ring';
import { systemClock, type Clock } from '../base/clock';
import type { SuspendOptions, TargetParameter, TargetType } from './target';

/**
 * DaemonScope: the state one daemon (or one test) shares between its devices, handed to every
 * target constructor through TargetContext. It is the instantiable form of what the kernel
 * keeps in module statics (dm-snap's `_origins`, the copy and resync throttles, the registered
 * target types), so two scopes in one process never see each other's state.
 */

/**
 * A named piece of shared state a target family keeps in the scope, made on first use. The
 * family owns the key (`const ORIGINS: ScopeKey<OriginRegistry> = {...}` in its own folder), so
 * dm/ never needs to know the family exists.
 */
export interface ScopeKey<T> {
  readonly name: string;
  create(scope: DaemonScope): T;
  /** Release the state when the scope closes (threads, descriptors). */
  dispose?(value: T): void;
}

/** A mapped device as another device's target may drive it (snapshot handover suspends the origin). */
export interface InternalDevice {
  readonly name: string;
  suspend(options: SuspendOptions): Promise<void>;
  resume(): Promise<void>;
}

/** Target types by table name. */
export class TargetTypeRegistry {
  private readonly types = new Map<string, TargetType>();

  constructor(types: Iterable<TargetType> = []) {
    for (const type of types) this.register(type);
  }

  /** Add a type; a second type of the same name is refused (the kernel's dm_register_target: EEXIST). */
  register(type: TargetType): void {
    if (this.types.has(type.name)) throw new DmError(`target type "${type.name}" is already registered`, 'EEXIST');
    this.types.set(type.name, type);
  }

  get(name: string): TargetType | undefined {
    return this.types.get(name);
  }

  names(): string[] {
    return [...this.types.keys()].sort();
  }

  /** Every registered type's parameters, by name. */
  parameters(): TargetParameter[] {
    return [...this.types.values()].flatMap((type) => type.parameters ?? []).sort((a, b) => a.name.localeCompare(b.name));
  }
}

/** A parameter and its value in one scope. */
export interface ParameterSetting {
  readonly name: string;
  readonly value: string;
  readonly description: string;
}

export interface DaemonScopeOptions {
  readonly targetTypes?: Iterable<TargetType>;
  /** The ring backing I/O goes through; default: one made on first use and closed with the scope. */
  readonly ring?: IoRing;
  /** Time for the time-based targets (flakey, delay); default: the system's monotonic clock. */
  readonly clock?: Clock;
  /** Where targets' warnings go (the kernel's DMWARN lines in dmesg); default: dropped. */
  readonly warn?: (message: string) => void;
}

export class DaemonScope {
  readonly targetTypes: TargetTypeRegistry;
  readonly clock: Clock;
  private ownRing: IoRing | undefined;
  private readonly givenRing: IoRing | undefined;
  private readonly shared = new Map<ScopeKey<unknown>, unknown>();
  private readonly devicesByKey = new Map<DeviceKey, InternalDevice>();

  /** A target's warning for the daemon's log, as the kernel's DMWARN (e.g. why a mirror log shows D). */
  readonly warn: (message: string) => void;

  constructor(options: DaemonScopeOptions = {}) {
    this.targetTypes = new TargetTypeRegistry(options.targetTypes);
    this.givenRing = options.ring;
    this.clock = options.clock ?? systemClock;
    this.warn = options.warn ?? (() => {});
  }

  /**
   * The ring of the thread this scope serves. Made lazily so that scopes for host tests over
   * in-memory devices never load the native addon.
   */
  get ring(): IoRing {
    if (this.givenRing !== undefined) return this.givenRing;
    this.ownRing ??= IoRing.create();
    return this.ownRing;
  }

  /** The family state under `key`, made on first use. Synchronous: lookup and insert cannot interleave. */
  get<T>(key: ScopeKey<T>): T {
    let value = this.shared.get(key) as T | undefined;
    if (value === undefined) {
      value = key.create(this);
      this.shared.set(key, value);
    }
    return value;
  }

  /** The target types' parameters with their values here; `name` picks one (ENOENT if none has it). */
  parameterSettings(name?: string): ParameterSetting[] {
    const chosen = name === undefined ? this.targetTypes.parameters() : [this.parameter(name)];
    return chosen.map((parameter) => ({ name: parameter.name, value: parameter.get(this), description: parameter.description }));
  }

  /** Set a parameter from its text (the parameter checks it and throws for a bad one). */
  setParameter(name: string, value: string): ParameterSetting {
    const parameter = this.parameter(name);
    parameter.set(this, value);
    return { name, value: parameter.get(this), description: parameter.description };
  }

  private parameter(name: string): TargetParameter {
    const parameter = this.targetTypes.parameters().find((candidate) => candidate.name === name);
    if (parameter === undefined) throw new DmError(`no parameter ${JSON.stringify(name)} (ublk-dm param lists them)`, 'ENOENT');
    return parameter;
  }

  /** Make a running mapped device findable by its block device's key. */
  addDevice(key: DeviceKey, device: InternalDevice): void {
    this.devicesByKey.set(key, device);
  }

  removeDevice(key: DeviceKey, device: InternalDevice): void {
    if (this.devicesByKey.get(key) === device) this.devicesByKey.delete(key);
  }

  /** One of our own mapped devices, by the key of its /dev/ublkbN (a table may name it as a backing device). */
  findDevice(key: DeviceKey): InternalDevice | undefined {
    return this.devicesByKey.get(key);
  }

  /** Release what the scope made itself, and the family state that asks to be released. */
  close(): void {
    for (const [key, value] of this.shared) key.dispose?.(value);
    this.shared.clear();
    this.ownRing?.close();
    this.ownRing = undefined;
  }
}
