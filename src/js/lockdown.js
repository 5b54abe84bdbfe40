// Freezes everything a script can reach from the global object, so what one action run changes
// cannot reach the next run, nor another app's. Run once per context, after the runtime is
// installed. Like SES's lockdown: data properties commonly assigned on instances (`this.name`
// in an Error subclass, `obj.toString = ...`) become accessors on frozen prototypes, so that
// assigning them on an instance still creates an own property instead of throwing.
(function lockdown(global) {
  "use strict";
  const overridable = new Set([
    "constructor", "name", "message", "toString", "valueOf", "toLocaleString", "toJSON",
  ]);
  const seen = new Set();
  function enableOverride(object, key, desc) {
    const value = desc.value;
    Object.defineProperty(object, key, {
      get() { return value; },
      set(v) {
        if (this === object) {
          throw new TypeError(`cannot assign to read only property '${String(key)}'`);
        }
        Object.defineProperty(this, key, { value: v, writable: true, enumerable: true, configurable: true });
      },
      enumerable: desc.enumerable,
      configurable: false,
    });
  }
  function harden(object) {
    if (object === null || (typeof object !== "object" && typeof object !== "function")) return;
    if (seen.has(object)) return;
    seen.add(object);
    for (const key of Reflect.ownKeys(object)) {
      if (object === global && key === "vo") continue;
      const desc = Object.getOwnPropertyDescriptor(object, key);
      if ("value" in desc) {
        if (typeof object !== "function" && overridable.has(key) && desc.configurable) {
          enableOverride(object, key, desc);
        }
        harden(desc.value);
      } else {
        harden(desc.get);
        harden(desc.set);
      }
    }
    harden(Object.getPrototypeOf(object));
    if (object !== global) Object.freeze(object);
  }
  const hidden = [
    Object.getPrototypeOf(function* () {}),
    Object.getPrototypeOf(async function () {}),
    Object.getPrototypeOf(async function* () {}),
    Object.getPrototypeOf((function* () {})()),
    Object.getPrototypeOf((async function* () {})()),
    Object.getPrototypeOf([][Symbol.iterator]()),
    Object.getPrototypeOf(new Map()[Symbol.iterator]()),
    Object.getPrototypeOf(new Set()[Symbol.iterator]()),
    Object.getPrototypeOf(""[Symbol.iterator]()),
    Object.getPrototypeOf(/a/[Symbol.matchAll]("")),
    Object.getPrototypeOf(Int8Array),
  ];
  for (const object of hidden) harden(object);
  harden(global);
  // Every global but `vo` becomes read-only, and no new global can be added.
  for (const key of Reflect.ownKeys(global)) {
    if (key === "vo") continue;
    const desc = Object.getOwnPropertyDescriptor(global, key);
    if (desc.configurable || desc.writable) {
      Object.defineProperty(global, key, "value" in desc
        ? { writable: false, configurable: false }
        : { configurable: false });
    }
  }
  Object.preventExtensions(global);
})(globalThis);
