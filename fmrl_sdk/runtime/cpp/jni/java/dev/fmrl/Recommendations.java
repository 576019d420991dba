package dev.fmrl;

import java.util.Arrays;

/**
 * A top-k answer of {@link Session#recommend(int)}: item ids and their scores, best first. Immutable: the
 * array getters return copies; {@link #id(int)} and {@link #score(int)} read without copying.
 */
public final class Recommendations {
  private final String[] ids;
  private final float[] scores;

  Recommendations(String[] ids, float[] scores) {
    this.ids = ids;
    this.scores = scores;
  }

  /** How many items (k, or fewer when exclude_seen removed more than k_max - k candidates). */
  public int size() {
    return ids.length;
  }

  /** The i-th best item's external id. */
  public String id(int i) {
    return ids[i];
  }

  /** The i-th best item's score. */
  public float score(int i) {
    return scores[i];
  }

  /** The ids, best first (a copy). */
  public String[] ids() {
    return ids.clone();
  }

  /** The scores, best first (a copy; descending). */
  public float[] scores() {
    return scores.clone();
  }

  @Override
  public String toString() {
    StringBuilder out = new StringBuilder("Recommendations[");
    for (int i = 0; i < ids.length; i++) {
      out.append(i == 0 ? "" : ", ").append(ids[i]).append('=').append(scores[i]);
    }
    return out.append(']').toString();
  }

  @Override
  public boolean equals(Object other) {
    if (!(other instanceof Recommendations)) return false;
    Recommendations that = (Recommendations) other;
    return Arrays.equals(ids, that.ids) && Arrays.equals(scores, that.scores);
  }

  @Override
  public int hashCode() {
    return 31 * Arrays.hashCode(ids) + Arrays.hashCode(scores);
  }
}
