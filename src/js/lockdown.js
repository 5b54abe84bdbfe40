// Freezes every built-in a script can reach, and the global object, so that what one action run
// changes cannot reach the next run. Run once per context, after the runtime is installed;
// `harden_tests.rs` checks the result with a walk of its own.
//
// Like SES's `harden`, it finds the intrinsics by walking the realm, not from a list of names:
// from the global object, and from one object of every kind the language makes whose prototype
// the global does not lead to (the iterators, iterator helpers, generators, async functions, the
// strict `arguments` object's %ThrowTypeError%), it follows every own property (symbols and
// non-enumerable ones included), every getter and setter and every [[Prototype]], and freezes
// each object it reaches. The sample objects themselves are left unfrozen and thrown away.
//
// Like SES's lockdown, data properties commonly assigned on instances (`this.name` in an Error
// subclass, `obj.toString = ...`) become accessors on the frozen prototypes, so that assigning
// them on an instance still creates an own property instead of throwing.
//
// The context's loop and recursion limits are already set, and count per call frame: so the walk
// goes from object to object with `Set.prototype.forEach`, not a loop or recursion, and only the
// key count of the largest object counts against them. It is written for boa's interpreter,
// which pays for every call and iteration: a plain indexed loop, nothing allocated per key.
(function lockdown(global) {
  "use strict";
  const { defineProperty, freeze, getOwnPropertyDescriptor, getPrototypeOf } = Object;
  const { ownKeys } = Reflect;
  const overridable = new Set([
    "constructor", "name", "message", "toString", "valueOf", "toLocaleString", "toJSON",
  ]);
  function enableOverride(object, key, desc) {
    const value = desc.value;
    defineProperty(object, key, {
      get() { return value; },
      set(v) {
        if (this === object) {
          throw new TypeError(`cannot assign to read only property '${String(key)}'`);
        }
        defineProperty(this, key, { value: v, writable: true, enumerable: true, configurable: true });
      },
      enumerable: desc.enumerable,
      configurable: false,
    });
  }

  function* generator() {}
  async function asyncFunction() {}
  async function* asyncGenerator() {}
  // One object of each kind whose intrinsic prototype (or accessor) the global does not lead to.
  const samples = new Set([
    (function () { return arguments; })(), // `callee` is %ThrowTypeError%
    generator, generator(), // %GeneratorFunction%, %GeneratorPrototype%
    asyncFunction, // %AsyncFunction%
    asyncGenerator, asyncGenerator(), // %AsyncGeneratorFunction%, %AsyncIteratorPrototype%
    [].values(), // %ArrayIteratorPrototype%, %IteratorPrototype%
    new Map().values(),
    new Set().values(),
    ""[Symbol.iterator](),
    /a/[Symbol.matchAll](""), // %RegExpStringIteratorPrototype%
    [].values().map((x) => x), // %IteratorHelperPrototype%
    Iterator.from({ next() {} }), // %WrapForValidIteratorPrototype%
  ]);

  // Every object reached so far; `forEach` below also visits those added while it runs.
  const reached = new Set(samples);
  reached.add(global);
  function harden(object) {
    const sample = samples.has(object);
    const override = !sample && typeof object !== "function";
    const keys = ownKeys(object);
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i];
      let desc = getOwnPropertyDescriptor(object, key);
      let value = desc.value;
      if (typeof value === "function" || (typeof value === "object" && value !== null)) {
        reached.add(value);
      }
      if (override && "value" in desc && desc.configurable && overridable.has(key)) {
        enableOverride(object, key, desc);
        desc = getOwnPropertyDescriptor(object, key);
      }
      value = desc.get;
      if (value !== undefined) reached.add(value);
      value = desc.set;
      if (value !== undefined) reached.add(value);
    }
    const prototype = getPrototypeOf(object);
    if (prototype !== null) reached.add(prototype);
    // The global object too: every global becomes read-only and no new one can be added.
    if (!sample) freeze(object);
  }
  reached.forEach(harden);
})(globalThis);
