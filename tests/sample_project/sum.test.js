"use strict";
// Run with `node --test`: Node's own test runner, no packages needed.
const test = require("node:test");
const assert = require("node:assert");
const sum = require("./sum.js");

test("sum adds", () => {
  assert.strictEqual(sum(2, 3), 5);
});
