//! Tests of the lockdown (`lockdown.js`): that no built-in a script can reach is left unfrozen,
//! found by a walk of the realm of their own rather than by trusting the lockdown's, and that
//! ordinary code still runs in a locked-down context.

use boa_engine::object::builtins::{JsArray, JsFunction};
use boa_engine::{Context, JsObject, JsString, JsValue, Source};
use serde::Deserialize;

use super::protocol::ContextLimits;
use super::realm::testing::{new_context, open_context};

/// Limits high enough that the test's own walk is never stopped by them.
fn limits() -> ContextLimits {
    ContextLimits {
        loop_iterations: 1_000_000_000,
        recursion: 400,
    }
}

fn locked_down() -> Context {
    new_context(&limits()).expect("a locked-down context")
}

/// Walks the realm the way a script can, without using `lockdown.js`, and reports every object
/// it reaches that is extensible, or has a writable or configurable property, by the path a
/// script would take to it.
///
/// It starts from the global object and from objects of every kind the language makes. Each
/// maker runs twice: an object that only one of the two results leads to is that result's own
/// (a fresh `arguments`, a generator function's `prototype`) and is walked through but not
/// checked; an object both lead to is shared, so a built-in, and is checked.
///
/// It is handed boa's list of intrinsics too, only to report those the walk did not reach.
const WALKER: &str = r#"
(function walker(intrinsics) {
  function caught(f) {
    try { f(); } catch (e) { return e; }
    throw new Error("expected a throw");
  }
  const makers = [
    () => ({}),
    () => Object.create(null),
    () => [1],
    () => function () {},
    () => function () { "use strict"; },
    () => () => {},
    () => ({ method() {} }).method,
    () => Object.getOwnPropertyDescriptor({ get x() { return 1; } }, "x").get,
    () => function () {}.bind(null),
    () => class {},
    () => class extends Error {},
    () => new (class extends Array {})(),
    () => (function () { return arguments; })(1),
    () => (function () { "use strict"; return arguments; })(1),
    () => function* () {},
    () => (function* () {})(),
    () => async function () {},
    () => async () => {},
    () => async function* () {},
    () => (async function* () {})(),
    () => new Promise(() => {}),
    () => Promise.withResolvers(),
    () => Promise.resolve(1),
    () => [].values(),
    () => [].keys(),
    () => [].entries(),
    () => new Uint8Array(1).values(),
    () => new Map([[1, 2]]).entries(),
    () => new Set([1]).values(),
    () => "ab"[Symbol.iterator](),
    () => "ab".matchAll(/a/g),
    () => /a/[Symbol.matchAll]("a"),
    () => [].values().map((x) => x),
    () => [].values().filter((x) => x),
    () => [].values().take(1),
    () => [].values().drop(1),
    () => [].values().flatMap((x) => [x]),
    () => Iterator.concat([]),
    () => Iterator.from({ next() { return { done: true }; } }),
    () => new Map(),
    () => new Set(),
    () => new WeakMap(),
    () => new WeakSet(),
    () => new WeakRef({}),
    () => new FinalizationRegistry(() => {}),
    () => new ArrayBuffer(8),
    () => new SharedArrayBuffer(8),
    () => new DataView(new ArrayBuffer(8)),
    () => new Int8Array(1),
    () => new Uint8Array(1),
    () => new Uint8ClampedArray(1),
    () => new Int16Array(1),
    () => new Uint16Array(1),
    () => new Int32Array(1),
    () => new Uint32Array(1),
    () => new BigInt64Array(1),
    () => new BigUint64Array(1),
    () => new Float32Array(1),
    () => new Float64Array(1),
    () => new Proxy({}, {}),
    () => new Proxy(function () {}, {}),
    () => Proxy.revocable({}, {}),
    () => new Error("x", { cause: 1 }),
    () => new TypeError("x"),
    () => new RangeError("x"),
    () => new ReferenceError("x"),
    () => new SyntaxError("x"),
    () => new EvalError("x"),
    () => new URIError("x"),
    () => new AggregateError([new Error("x")]),
    () => caught(() => null.x),
    () => caught(() => undeclaredVariable),
    () => caught(() => eval("1")),
    () => caught(() => new Function("")),
    () => caught(() => JSON.parse("{")),
    () => caught(() => new Array(-1)),
    () => new Date(0),
    () => /a(?<b>c)/dg,
    () => /a(?<b>c)/d.exec("ac"),
    () => Object(Symbol("x")),
    () => Object(1n),
    () => Object(1),
    () => Object("s"),
    () => Object(true),
    () => JSON.parse('{"a":[1]}'),
    () => Object.groupBy([1], (x) => x),
    () => Map.groupBy([1], (x) => x),
    () => Object.getOwnPropertyDescriptor(globalThis, "JSON"),
    () => ((strings) => strings)`a${1}b`,
  ];

  function isObject(value) {
    return (typeof value === "object" && value !== null) || typeof value === "function";
  }
  function edges(object, path, visit) {
    for (const key of Reflect.ownKeys(object)) {
      const desc = Object.getOwnPropertyDescriptor(object, key);
      visit(desc.value, propertyPath(path, key), desc);
      visit(desc.get, `Object.getOwnPropertyDescriptor(${path}, ${keyLiteral(key)}).get`);
      visit(desc.set, `Object.getOwnPropertyDescriptor(${path}, ${keyLiteral(key)}).set`);
      // What a getter returns is reachable too (the lockdown turns some data properties into
      // getters of the same value); many built-in getters throw on their prototype.
      if (desc.get) {
        try {
          visit(Reflect.apply(desc.get, object, []), propertyPath(path, key));
        } catch (e) {}
      }
    }
    visit(Object.getPrototypeOf(object), `Object.getPrototypeOf(${path})`);
  }
  function keyLiteral(key) {
    if (typeof key !== "symbol") return JSON.stringify(key);
    const name = key.description;
    return name.startsWith("Symbol.") ? name : `Symbol(${JSON.stringify(name)})`;
  }
  function propertyPath(path, key) {
    return typeof key === "string" && /^[A-Za-z_$][\w$]*$/.test(key)
      ? `${path}.${key}`
      : `${path}[${keyLiteral(key)}]`;
  }

  // Everything the second result of each maker leads to.
  const twins = new Set();
  const pending = makers.map((make) => make());
  for (let i = 0; i < pending.length; i++) {
    const object = pending[i];
    edges(object, "", (value) => {
      if (isObject(value) && !twins.has(value)) {
        twins.add(value);
        pending.push(value);
      }
    });
  }

  // Breadth first, from the global object before the made objects: each object is named by
  // the shortest path, from the global object where there is one.
  const unfrozen = [];
  const visited = new Set();
  const queue = [];
  function visit(value, path, fresh) {
    if (!isObject(value) || visited.has(value)) return;
    visited.add(value);
    queue.push({ object: value, path, fresh });
  }
  function drain() {
    while (queue.length > 0) {
      const { object, path, fresh } = queue.shift();
      if (!fresh && Object.isExtensible(object)) unfrozen.push(`${path} is extensible`);
      // `desc` comes with the property's value (data or accessor) only, once per property.
      edges(object, path, (value, at, desc) => {
        if (!fresh && desc) {
          if (desc.writable) unfrozen.push(`${at} is writable`);
          if (desc.configurable) unfrozen.push(`${at} is configurable`);
        }
        visit(value, at, fresh && !twins.has(value));
      });
    }
  }
  visit(globalThis, "globalThis", false);
  drain();
  for (const make of makers) {
    visit(make(), String(make).replace(/^\(\) => /, ""), true);
  }
  drain();
  const unreached = intrinsics.filter(([, object]) => !visited.has(object)).map(([name]) => name);
  return JSON.stringify({ unfrozen, unreached, visited: visited.size });
})
"#;

#[derive(Debug, Deserialize)]
struct Walk {
    /// Each property or object that is not frozen, by path.
    unfrozen: Vec<String>,
    /// boa's intrinsics the walk did not reach.
    unreached: Vec<String>,
    /// How many objects the walk reached.
    visited: usize,
}

fn walk(context: &mut Context) -> Walk {
    let walker = context
        .eval(Source::from_bytes(WALKER))
        .expect("the walker compiles");
    let walker = walker
        .as_object()
        .and_then(JsFunction::from_object)
        .expect("the walker is a function");
    let pairs: Vec<JsValue> = intrinsics(context)
        .into_iter()
        .map(|(name, object)| {
            let pair = [JsValue::from(JsString::from(name.as_str())), object.into()];
            JsArray::from_iter(pair, context).into()
        })
        .collect();
    let pairs = JsArray::from_iter(pairs, context);
    let report = walker
        .call(&JsValue::undefined(), &[pairs.into()], context)
        .unwrap_or_else(|e| panic!("the walker threw: {e}"));
    let report = report.as_string().expect("the walker returns JSON");
    serde_json::from_str(&report.to_std_string_escaped()).expect("the walker's JSON")
}

/// Every intrinsic boa keeps for the realm, by name: what the walk must reach.
fn intrinsics(context: &Context) -> Vec<(String, JsObject)> {
    let intrinsics = context.intrinsics();
    let c = intrinsics.constructors();
    let o = intrinsics.objects();
    let i = o.iterator_prototypes();
    let mut all = Vec::new();
    macro_rules! constructors {
        ($($name:literal $method:ident),* $(,)?) => {$(
            all.push(($name.to_string(), c.$method().constructor()));
            all.push((concat!($name, ".prototype").to_string(), c.$method().prototype()));
        )*};
    }
    constructors!(
        "Object" object, "Proxy" proxy, "Date" date, "Function" function,
        "AsyncFunction" async_function, "GeneratorFunction" generator_function,
        "AsyncGeneratorFunction" async_generator_function, "Array" array, "BigInt" bigint,
        "Number" number, "Boolean" boolean, "String" string, "RegExp" regexp, "Symbol" symbol,
        "Error" error, "TypeError" type_error, "ReferenceError" reference_error,
        "RangeError" range_error, "SyntaxError" syntax_error, "EvalError" eval_error,
        "URIError" uri_error, "AggregateError" aggregate_error, "Map" map, "Set" set,
        "TypedArray" typed_array, "Int8Array" typed_int8_array, "Uint8Array" typed_uint8_array,
        "Uint8ClampedArray" typed_uint8clamped_array, "Int16Array" typed_int16_array,
        "Uint16Array" typed_uint16_array, "Int32Array" typed_int32_array,
        "Uint32Array" typed_uint32_array, "BigInt64Array" typed_bigint64_array,
        "BigUint64Array" typed_biguint64_array, "Float32Array" typed_float32_array,
        "Float64Array" typed_float64_array, "ArrayBuffer" array_buffer,
        "SharedArrayBuffer" shared_array_buffer, "DataView" data_view,
        "DateTimeFormat" date_time_format, "Promise" promise, "WeakRef" weak_ref,
        "WeakMap" weak_map, "WeakSet" weak_set, "Iterator" iterator,
        "FinalizationRegistry" finalization_registry,
    );
    let objects: Vec<(&str, JsObject)> = vec![
        ("ThrowTypeError", o.throw_type_error().into()),
        ("Array.prototype.values", o.array_prototype_values().into()),
        (
            "Array.prototype.toString",
            o.array_prototype_to_string().into(),
        ),
        ("GeneratorPrototype", o.generator()),
        ("AsyncGeneratorPrototype", o.async_generator()),
        ("Atomics", o.atomics()),
        ("eval", o.eval().into()),
        ("Reflect", o.reflect()),
        ("Math", o.math()),
        ("JSON", o.json()),
        ("isFinite", o.is_finite().into()),
        ("isNaN", o.is_nan().into()),
        ("parseFloat", o.parse_float().into()),
        ("parseInt", o.parse_int().into()),
        ("AsyncIteratorPrototype", i.async_iterator()),
        (
            "AsyncFromSyncIteratorPrototype",
            i.async_from_sync_iterator(),
        ),
        ("ArrayIteratorPrototype", i.array()),
        ("SetIteratorPrototype", i.set()),
        ("StringIteratorPrototype", i.string()),
        ("RegExpStringIteratorPrototype", i.regexp_string()),
        ("MapIteratorPrototype", i.map()),
        ("IteratorHelperPrototype", i.iterator_helper()),
        ("WrapForValidIteratorPrototype", i.wrap_for_valid_iterator()),
    ];
    all.extend(objects.into_iter().map(|(name, o)| (name.to_string(), o)));
    all
}

/// boa's intrinsics no script can reach, so the walk can't either: the async-from-sync iterator
/// is internal to `for await` (its methods are called with the sync iterator as `this`), and
/// this build has no `Intl` (so no `DateTimeFormat`) and `Proxy` has no prototype.
const UNREACHABLE: [&str; 4] = [
    "Proxy.prototype",
    "DateTimeFormat",
    "DateTimeFormat.prototype",
    "AsyncFromSyncIteratorPrototype",
];

#[test]
fn every_built_in_a_script_can_reach_is_frozen() {
    let walk = walk(&mut locked_down());
    assert!(
        walk.unfrozen.is_empty(),
        "{} unfrozen built-ins:\n{}",
        walk.unfrozen.len(),
        walk.unfrozen.join("\n")
    );
    assert_eq!(
        walk.unreached, UNREACHABLE,
        "the walk must reach every intrinsic a script can: give it an object that leads there"
    );
    assert!(walk.visited > 700, "the walk reached only {}", walk.visited);
}

#[test]
fn the_walk_names_each_unfrozen_built_in_by_its_path() {
    // The same walk in a context that is not locked down finds everything open.
    let walk = walk(&mut open_context(&limits()).expect("a context"));
    for expected in [
        "globalThis is extensible",
        "globalThis.Array is writable",
        "Object.getPrototypeOf([].values().map((x) => x)).next is writable",
        "Object.getPrototypeOf(Iterator.from({ next() { return { done: true }; } })) is extensible",
        "globalThis.Iterator.prototype[Symbol.iterator] is configurable",
        "Object.getPrototypeOf(async function () {}) is extensible",
    ] {
        assert!(
            walk.unfrozen.iter().any(|u| u == expected),
            "{expected:?} not in {:#?}",
            walk.unfrozen
        );
    }
    assert!(
        !walk.unfrozen.iter().any(|u| u.starts_with("[].values()")),
        "fresh objects are not built-ins: {:#?}",
        walk.unfrozen
    );
}

/// Runs `body` as an action does (the body of a function, strict unless `sloppy`), then the job
/// queue, and returns what the body returned as JSON.
fn run(context: &mut Context, body: &str, sloppy: bool) -> serde_json::Value {
    let strict = if sloppy { "" } else { "\"use strict\";" };
    let source = format!("(function () {{{strict}\n{body}\n}})");
    let action = context
        .eval(Source::from_bytes(&source))
        .unwrap_or_else(|e| panic!("{body} does not compile: {e}"));
    let action = action
        .as_object()
        .and_then(JsFunction::from_object)
        .expect("a function");
    let value = action
        .call(&JsValue::undefined(), &[], context)
        .unwrap_or_else(|e| panic!("{body} threw: {e}"));
    context.run_jobs().expect("jobs run");
    value.to_json(context).expect("json").unwrap_or_default()
}

/// Changes a script might try to make to a built-in or to the global object.
const TAMPERING: [&str; 17] = [
    "Iterator.prototype.map = function () { return 'tampered'; }",
    "Object.getPrototypeOf([].values()).next = function () { return { done: true }; }",
    "Object.getPrototypeOf([].values().map((x) => x)).next = function () { return { done: true }; }",
    "Object.getPrototypeOf(Iterator.from({ next() {} })).next = function () { return { done: true }; }",
    "Object.getPrototypeOf(function* () {}).prototype.next = function () { return { done: true }; }",
    "Array.prototype.push = function () { return 0; }",
    "delete Array.prototype.map",
    "Object.setPrototypeOf(Array.prototype, null)",
    "Promise.prototype.then = function () {}",
    "JSON.stringify = function () { return 'tampered'; }",
    "Error.prototype.name = 'tampered'",
    "Object.getOwnPropertyDescriptor(Error.prototype, 'name').get.tampered = 1",
    "utils.info = function () {}",
    "console.log = function () {}",
    "globalThis.x = 1",
    "Object.defineProperty(globalThis, 'vo', { writable: false })",
    "Object.defineProperty(globalThis, 'JSON', { value: null })",
];

/// What each change above would have changed, read back.
const PRISTINE: &str = r#"
return {
  map: [1, 2].values().map((x) => x * 2).toArray(),
  arrayNext: [...[1, 2].values()],
  helperNext: [...[1, 2].values().map((x) => x)],
  wrapNext: [...Iterator.from({ i: 0, next() { return { done: this.i > 1, value: this.i++ }; } })],
  generatorNext: [...(function* () { yield 1; })()],
  push: [].push(1),
  hasMap: typeof Array.prototype.map,
  arrayProto: Object.getPrototypeOf(Array.prototype) === Object.prototype,
  then: typeof Promise.prototype.then,
  json: JSON.stringify({ a: 1 }),
  errorName: Error.prototype.name,
  getterTampered: 'tampered' in Object.getOwnPropertyDescriptor(Error.prototype, 'name').get,
  info: String(utils.info).includes('native code'),
  log: String(console.log).includes('native code'),
  x: typeof x,
  vo: 'vo' in globalThis,
  globalJson: typeof globalThis.JSON,
};
"#;

#[test]
fn changing_a_built_in_throws_in_strict_mode_and_changes_nothing() {
    let mut context = locked_down();
    let pristine = run(&mut context, PRISTINE, false);
    for change in TAMPERING {
        let outcome = run(
            &mut context,
            &format!("try {{ {change}; return 'allowed'; }} catch (e) {{ return e.name; }}"),
            false,
        );
        assert_eq!(outcome, "TypeError", "{change}");
        // Sloppy code is not told, but changes nothing either.
        run(
            &mut context,
            &format!("try {{ {change}; }} catch (e) {{}}"),
            true,
        );
    }
    assert_eq!(run(&mut context, PRISTINE, false), pristine);
}

#[test]
fn common_code_still_works_in_a_locked_down_context() {
    let mut context = locked_down();
    let outcome = run(
        &mut context,
        r#"
class NotFound extends Error {
  constructor(message) { super(message); this.name = 'NotFound'; }
}
const own = {};
own.toString = () => 'mine';
own.constructor = 'mine';
const error = new TypeError('m');
error.message = 'changed';
error.name = 'Custom';
const out = {
  subclass: String(new NotFound('gone')),
  isError: new NotFound('x') instanceof Error,
  ownToString: String(own),
  ownConstructor: own.constructor,
  error: String(error),
  json: JSON.parse(JSON.stringify({ a: [1, { b: 'c' }] })),
  helpers: [1, 2, 3, 4].values().filter((x) => x % 2 === 0).map((x) => x * 10).toArray(),
  from: Iterator.from({ i: 0, next() { return { done: this.i > 2, value: this.i++ }; } }).toArray(),
  generator: [...(function* () { yield 1; yield 2; })()],
  map: [...new Map([['k', 1]]).entries()],
  regex: [...'a1b2'.matchAll(/\d/g)].map((m) => m[0]),
  spread: { ...{ a: 1 }, b: 2 },
  typed: Array.from(new Uint8Array([1, 2])),
};
Promise.resolve(1).then((v) => { out.then = v; });
(async () => { out.awaited = await Promise.resolve(2); })();
(async () => { out.asyncIterated = []; for await (const v of [3, 4]) out.asyncIterated.push(v); })();
return out;
"#,
        false,
    );
    let expected = serde_json::json!({
        "subclass": "NotFound: gone",
        "isError": true,
        "ownToString": "mine",
        "ownConstructor": "mine",
        "error": "Custom: changed",
        "json": { "a": [1, { "b": "c" }] },
        "helpers": [20, 40],
        "from": [0, 1, 2],
        "generator": [1, 2],
        "map": [["k", 1]],
        "regex": ["1", "2"],
        "spread": { "a": 1, "b": 2 },
        "typed": [1, 2],
        "then": 1,
        "awaited": 2,
        "asyncIterated": [3, 4],
    });
    assert_eq!(outcome, expected);
}

#[test]
fn the_lockdown_is_not_stopped_by_tight_script_limits() {
    let tight = ContextLimits {
        loop_iterations: 200,
        recursion: 10,
    };
    let mut context = new_context(&tight).expect("a locked-down context");
    // The walk itself needs more room.
    let room = limits();
    context
        .runtime_limits_mut()
        .set_loop_iteration_limit(room.loop_iterations);
    context
        .runtime_limits_mut()
        .set_recursion_limit(room.recursion);
    assert_eq!(walk(&mut context).unfrozen, Vec::<String>::new());
}
